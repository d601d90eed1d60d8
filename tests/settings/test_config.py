"""The config file: every example loads, errors name file, line, key path and what was
expected, flags the user typed win over the file, and every option is documented.

CoreDNS's test/readme_test.go is the model: examples that do not load are bugs.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from clusterdns.cache.settings import cache_kwargs
from clusterdns.cli import build_parser
from clusterdns.forward.settings import forward_kwargs
from clusterdns.options import checks
from clusterdns.options.declare import option, section
from clusterdns.settings import config as C, typedyaml
from clusterdns.settings.flags import add_flags, apply_flags
from clusterdns.settings.reference import markdown, reference
from helpers import ROOT

CONFIG_DIR = ROOT / "config"
#: every page a user reads config snippets in: each yaml snippet there must load
DOC_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OPTIONS_DOC = ROOT / "docs" / "options.md"
FENCE = re.compile(r"^```yaml[^\n]*\n(.*?)^```", re.S | re.M)


def _is_manifest(doc: object) -> bool:
    """Kubernetes objects (demo clusters, ConfigMaps) and Prometheus rules are not configs."""
    return isinstance(doc, dict) and ("kind" in doc or "apiVersion" in doc or "groups" in doc)


def config_examples() -> list[Path]:
    return sorted(p for p in CONFIG_DIR.glob("*.yaml") if not _is_manifest(yaml.safe_load(p.read_text())))


def readme_snippets(text: str) -> list[tuple[int, str]]:
    """(line, text) of each ```yaml block that is a clusterdns config.

    Skipped: Kubernetes objects, Prometheus rules, and blocks whose first line is
    `# not a clusterdns config`.
    """
    out = []
    for m in FENCE.finditer(text):
        body = m.group(1)
        if body.lstrip().startswith("# not a clusterdns config"):
            continue
        if _is_manifest(yaml.safe_load(body)):
            continue
        out.append((text.count("\n", 0, m.start()) + 2, body))
    return out


# ----------------------------------------------------------------------- examples load


def test_config_dir_has_an_example_per_mode() -> None:
    modes = {C.guess_mode(C.read_yaml(p)) for p in config_examples()}
    assert modes == set(C.MODES), f"examples in config/: {[p.name for p in config_examples()]}"


@pytest.mark.parametrize("path", config_examples(), ids=lambda p: p.name)
def test_config_example_loads(path: Path) -> None:
    data = C.read_yaml(path)
    cfg = C.parse(data, C.guess_mode(data), str(path))
    assert isinstance(cfg, tuple(C.SCHEMAS.values()))


@pytest.mark.parametrize("path", config_examples(), ids=lambda p: p.name)
def test_config_example_mentions_every_option(path: Path) -> None:
    """The commented examples are the long-form docs: each option appears in its mode's file."""
    mode = C.guess_mode(C.read_yaml(path))
    text = path.read_text()
    missing = [key for key, _, _ in reference(mode) if not re.search(rf"^\s*{key.split('.')[-1]}:", text, re.M)]
    assert not missing, f"{path.name} does not show: {missing}"


def test_configs_embedded_in_k8s_manifests_load() -> None:
    """ConfigMaps in k8s/ that carry a clusterdns config (data key *.yaml) load too."""
    found = 0
    for path in sorted((ROOT / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict) or doc.get("kind") != "ConfigMap":
                continue
            for key, body in (doc.get("data") or {}).items():
                if key.endswith((".yaml", ".yml")):
                    data = C.parse_text(body, f"{path.name}:{key}")
                    C.parse(data, C.guess_mode(data), f"{path.name}:{key}")
                    found += 1
    assert found, "k8s/node-local.yaml's ConfigMap carries node-cache.yaml: it must be found and load"


def test_readme_snippet_finder() -> None:
    text = ("intro\n```yaml\nttl: 30\n```\n```yaml\napiVersion: v1\nkind: ConfigMap\n```\n"
            "```yaml\n# not a clusterdns config\nfoo: 1\n```\n```sh\nttl: 1\n```\n")
    assert readme_snippets(text) == [(3, "ttl: 30\n")]


def test_every_config_snippet_in_the_readme_and_docs_loads() -> None:
    assert readme_snippets((ROOT / "docs" / "configuration.md").read_text()), \
        "docs/configuration.md has yaml config snippets"
    for page in DOC_PAGES:
        name = page.relative_to(ROOT).as_posix()
        for line, body in readme_snippets(page.read_text()):
            data = C.parse_text(body, f"{name}:{line}")
            C.parse(data, C.guess_mode(data), f"{name} (snippet at line {line})")


# ----------------------------------------------------------------------- errors


ERRORS = [
    # (file text, mode, expected fragments of one error line)
    ("zone: cluster.local\nzonee: x\n", "serve", ["bad.yaml:2:", "zonee", "unknown key", "did you mean zone"]),
    ("cache:\n  max_entries: 5\n  max_tll: 30\n", "serve", ["bad.yaml:3:", "cache.max_tll", "unknown key", "success_ttl"]),
    ("ttl: thirty\n", "serve", ["bad.yaml:1:", "ttl", "expected an integer", "'thirty' (string)"]),
    ("ttl: 99999\n", "serve", ["bad.yaml:1:", "ttl", "expected 0..3600"]),
    ("ttl: true\n", "serve", ["bad.yaml:1:", "ttl", "expected an integer", "(boolean)"]),
    ("listen: 127.0.0.1:53\n", "serve", ["bad.yaml:1:", "listen", "expected a list of strings"]),
    ("listen:\n  - 127.0.0.1:53\n  - localhost:53\n", "serve", ["bad.yaml:3:", "listen[1]", "IP address literal"]),
    ("cache:\n  min_ttl: 60\n", "serve", ["bad.yaml:1:", "cache.min_ttl", "at most cache.success_ttl"]),
    ("forward:\n  policy: fastest\n", "serve", ["bad.yaml:2:", "forward.policy", "one of random, round_robin"]),
    ("forward:\n  read_timeout: 5 parsecs\n", "serve", ["bad.yaml:2:", "forward.read_timeout", "number of seconds"]),
    ("stub_domains:\n  consul.local: [10.0.0.1, dns.google]\n", "serve",
     ["bad.yaml:2:", "stub_domains.consul.local[1]", "IP address literal"]),
    ("stub_domains:\n  consul.local: []\n", "serve", ["bad.yaml:2:", "stub_domains.consul.local", "non-empty list"]),
    ("metrics: 9153\n", "serve", ["bad.yaml:1:", "metrics", "expected a string such as ':9153' or null"]),
    ("metrics: localhost\n", "serve", ["bad.yaml:1:", "metrics", "IP address literal"]),
    ("log_format: xml\n", "serve", ["bad.yaml:1:", "log_format", "one of text, json"]),
    ("manifests: [a.yaml]\nkubeconfig: /k\n", "serve", ["bad.yaml:1:", "manifests", "either manifests or kubeconfig"]),
    ("ttl: 30\nttl: 5\n", "serve", ["bad.yaml:2", "not valid YAML", "given twice"]),
    ("ttl: [30\n", "serve", ["bad.yaml:2", "not valid YAML"]),
    ("- ttl: 30\n", "serve", ["bad.yaml", "expected a mapping of settings at the top"]),
    ("zone: cluster.local\n", "node-cache", ["bad.yaml:1:", "zone", "unknown key", "cluster_domain"]),
    ("cache:\n  cluster_denial_ttl: -1\n", "node-cache", ["bad.yaml:2:", "cache.cluster_denial_ttl", "expected 0..604800"]),
]


@pytest.mark.parametrize("text,mode,fragments", ERRORS, ids=[e[0].splitlines()[-1][:30] for e in ERRORS])
def test_errors_name_file_line_key_and_expectation(tmp_path: Path, text: str, mode: str, fragments: list[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(C.ConfigError) as exc:
        C.load(path, mode)
    assert any(all(f in p for f in fragments) for p in exc.value.problems), exc.value.problems


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("ttl: -1\npods: sometimes\ncache:\n  prefetch: many\nnope: 1\n")
    with pytest.raises(C.ConfigError) as exc:
        C.load(path)
    assert [p.split(":")[1] for p in exc.value.problems] == ["1", "2", "4", "5"], exc.value.problems


def test_unreadable_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(C.ConfigError, match=r"missing\.yaml: cannot read"):
        C.load(tmp_path / "missing.yaml")


def test_durations_and_defaults() -> None:
    cfg = C.parse({"lameduck": "1m30s", "tcp_idle_timeout": "500ms", "sync_timeout": 2, "cache": {"serve_stale": "1h"}})
    assert (cfg.lameduck, cfg.tcp_idle_timeout, cfg.sync_timeout, cfg.cache.serve_stale) == (90.0, 0.5, 2.0, 3600.0)
    assert cfg.ttl == C.ServeConfig().ttl and cfg.forward.policy == "random"
    assert C.parse(None) == C.ServeConfig()  # an empty file is all defaults


# ----------------------------------------------------------------------- check-config


def test_check_config_says_ok_or_lists_problems(tmp_path: Path) -> None:
    code, lines = C.main_check(str(CONFIG_DIR / "node-cache.yaml"))
    assert code == 0 and lines == [f"{CONFIG_DIR / 'node-cache.yaml'}: OK (node-cache)"]
    bad = tmp_path / "c.yaml"
    bad.write_text("ttl: 99999\nlisten: [':53']\n")
    code, lines = C.main_check(str(bad))
    assert code == 1 and len(lines) == 1 and "ttl: expected 0..3600" in lines[0]


def test_check_config_reads_the_kube_dns_configmap_with_the_forwarding_reader(tmp_path: Path) -> None:
    cm = tmp_path / "kube-dns.yaml"
    cm.write_text(json.dumps({"kind": "ConfigMap", "data": {"stubDomains": json.dumps({"acme.local": ["1.2.3.4"]}),
                                                          "upstreamNameservers": json.dumps(["8.8.8.8"])}}))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"kube_dns_configmap: {cm}\nmanifests: [{ROOT / 'config' / 'demo-cluster.yaml'}]\n")
    assert C.main_check(str(cfg))[0] == 0
    cm.write_text(json.dumps({"kind": "ConfigMap", "data": {"upstreamNameservers": "[not json"}}))
    code, lines = C.main_check(str(cfg))
    assert code == 1 and "kube_dns_configmap" in lines[0] and "upstreamNameservers" in lines[0]


def test_guess_mode() -> None:
    assert C.guess_mode({"cluster_dns": "10.0.0.1", "listen": []}) == "node-cache"
    assert C.guess_mode({"zone": "x", "listen": []}) == "serve"
    assert C.guess_mode({}) == "serve"


# ----------------------------------------------------------------------- flags


def _merged(argv: list[str], file_text: str, tmp_path: Path) -> C.AnyConfig:
    path = tmp_path / "c.yaml"
    path.write_text(file_text)
    args = build_parser().parse_args([argv[0], "--config", str(path), *argv[1:]])
    return C.resolve(args.command, args, environ={})


def test_flags_given_win_even_when_they_equal_the_default(tmp_path: Path) -> None:
    cfg = _merged(["serve", "--ttl", "5", "--upstream", "10.0.0.9"], "ttl: 30\nzone: corp.local\nupstreams: [10.0.0.1]\n",
                  tmp_path)
    assert cfg.ttl == 5  # typed, although 5 is the default
    assert cfg.zone == "corp.local"  # not typed: the file's value stays
    assert cfg.upstreams == ["10.0.0.9"]


def test_flags_that_negate_and_stubs(tmp_path: Path) -> None:
    cfg = _merged(["serve", "--no-loop-detect", "--stub", "acme.local=10.0.0.1,10.0.0.2"], "loop_detect: true\n", tmp_path)
    assert cfg.loop_detect is False and cfg.stub_domains == {"acme.local": ["10.0.0.1", "10.0.0.2"]}
    nc = _merged(["node-cache", "--policy", "sequential", "--serve-stale", "0", "--cluster-udp"],
                 "forward:\n  policy: random\n", tmp_path)
    assert nc.forward.policy == "sequential" and nc.cache.serve_stale == 0.0 and nc.cluster_force_tcp is False


def test_flag_values_are_checked_like_file_values() -> None:
    args = build_parser().parse_args(["serve", "--ttl", "99999", "--query-log-sample", "0", "--lameduck", "1m30s"])
    with pytest.raises(C.ConfigError) as exc:
        C.resolve("serve", args)
    assert exc.value.problems == ["command line: --query-log-sample: expected at least 1, got 0 (integer)",
                                  "command line: --ttl: expected 0..3600 seconds (CoreDNS's range), got 99999 (integer)"]
    assert C.resolve("serve", build_parser().parse_args(["serve", "--lameduck", "1m30s"])).lameduck == 90.0


#: every flag of each mode before the flags were generated from the schema: all must still parse
FLAGS_USERS_HAVE = {
    "serve": ["--config", "--context", "--endpoint-pod-names", "--error-consolidate", "--health",
              "--ignore-empty-service", "--kube-dns-configmap", "--kubeconfig", "--labels", "--lameduck", "--listen",
              "--log-format", "--log-level", "--manifests", "--max-tcp-connections", "--max-udp-size", "--metrics",
              "--namespaces", "--no-loop-detect", "--pods", "--query-log", "--query-log-sample", "--ready",
              "--resolv-conf", "--rrl-ipv4-prefix-length", "--rrl-ipv6-prefix-length", "--rrl-max-table-size",
              "--rrl-responses-per-second", "--rrl-slip", "--rrl-window", "--shutdown-timeout", "--stub",
              "--sync-timeout", "--tcp-idle-timeout", "--ttl", "--upstream", "--watch-config", "--workers", "--zone"],
    "node-cache": ["--cache-denial-entries", "--cluster-dns", "--cluster-domain", "--cluster-udp", "--config",
                   "--error-consolidate", "--health", "--kube-dns-configmap", "--lameduck", "--listen", "--log-format",
                   "--log-level", "--max-concurrent", "--metrics", "--no-loop-detect", "--policy", "--prefetch",
                   "--query-log", "--query-log-sample", "--resolv-conf", "--rrl-ipv4-prefix-length",
                   "--rrl-ipv6-prefix-length", "--rrl-max-table-size", "--rrl-responses-per-second", "--rrl-slip",
                   "--rrl-window", "--serve-stale", "--shutdown-timeout", "--stub", "--upstream", "--watch-config"],
}


def _subparser(mode: str) -> argparse.ArgumentParser:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[mode]


@pytest.mark.parametrize("mode", C.MODES)
def test_every_option_has_one_flag_and_every_old_flag_still_exists(mode: str) -> None:
    sub = _subparser(mode)
    by_dest = {a.dest: a.option_strings for a in sub._actions if a.option_strings and a.dest not in ("help", "config")}
    keys = [key for key, _, _ in reference(mode)]
    assert sorted(by_dest) == sorted(keys), "a flag per option, named by its key path"
    assert all(len(names) == 1 for names in by_dest.values())
    have = {o for a in sub._actions for o in a.option_strings}
    assert not set(FLAGS_USERS_HAVE[mode]) - have, "a flag users have would be gone"


@dataclass
class _Knob:
    depth: int = option(3, "How deep the knob goes, a reason long enough.", check=checks.between(1, 9))


@dataclass
class _Toy:
    knob: _Knob = section(_Knob, "The knob.")
    listen: list[str] = option(doc="Where to listen.", factory=list)


def test_a_new_option_is_one_declaration() -> None:
    """An option added to a section gets its YAML key, flag, check and reference row from that one line."""
    parser = argparse.ArgumentParser()
    add_flags(parser, _Toy)
    assert apply_flags(_Toy(), parser.parse_args(["--knob-depth", "7"])).knob.depth == 7
    with pytest.raises(C.ConfigError, match=r"--knob-depth: expected 1\.\.9, got 12"):
        apply_flags(_Toy(), parser.parse_args(["--knob-depth", "12"]))
    problems = typedyaml.Problems("toy.yaml")
    typedyaml.fill(_Toy(), {"knob": {"depth": 0}}, "", problems, 1)
    assert problems.items == ["toy.yaml:1: knob.depth: expected 1..9, got 0 (integer)"]


def test_restart_only_keys_come_from_the_declarations() -> None:
    assert {"listen", "health", "ready", "metrics", "workers", "manifests", "kubeconfig", "context",
                              "namespaces", "labels", "pods", "endpoint_pod_names", "sync_timeout", "watch_config"} == C.RESTART_ONLY
    old, new = C.ServeConfig(), C.ServeConfig(ttl=30, listen=["127.0.0.1:5353"])
    assert C.split_reload(old, new) == (["ttl"], ["listen"])


# ----------------------------------------------------------------------- documentation


@pytest.mark.parametrize("mode", C.MODES)
def test_every_option_has_a_default_and_a_reason(mode: str) -> None:
    rows = reference(mode)
    assert len(rows) > 20
    undocumented = [key for key, _, why in rows if len(why) < 15]
    assert not undocumented


def test_options_page_is_the_generated_reference() -> None:
    """docs/options.md is written by `python -m clusterdns.settings.reference docs/options.md`."""
    assert OPTIONS_DOC.read_text() == markdown(), (
        "docs/options.md is stale: run python -m clusterdns.settings.reference docs/options.md")


@pytest.mark.parametrize("mode", C.MODES)
def test_reference_defaults_round_trip(mode: str) -> None:
    """The reference's defaults, written back as YAML, give the built-in defaults."""
    doc: dict = {}
    for key, default, _ in reference(mode):
        *parents, leaf = key.split(".")
        node = doc
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(default)
    assert C.parse(doc, mode) == C.SCHEMAS[mode]()


def test_the_cache_and_forwarder_take_every_tuning_value_from_the_settings() -> None:
    """ResponseCache and Forwarder declare no defaults of their own: each tuning parameter is
    required, and the settings' kwargs give exactly those parameters (one copy of each default)."""
    import inspect

    from clusterdns.cache.cache import ResponseCache
    from clusterdns.forward.forwarder import Forwarder

    wiring = {"fetch", "timer", "self", "upstreams", "except_zones", "name"}
    for component, given in ((ResponseCache, cache_kwargs(C.ServeConfig().cache, 30, 30)),
                             (Forwarder, forward_kwargs(C.ServeConfig().forward))):
        params = {k: p for k, p in inspect.signature(component).parameters.items() if k not in wiring}
        assert set(params) == set(given), component
        assert [k for k, p in params.items() if p.default is not inspect.Parameter.empty] == [], component


@pytest.mark.parametrize("mode", C.MODES)
def test_help_shows_each_default_as_the_config_file_writes_it(mode: str) -> None:
    """The default in each flag's help, read back as YAML, is the default itself."""
    from clusterdns.settings.flags import flags, yaml_text

    for flag in flags(C.SCHEMAS[mode]):
        assert yaml.safe_load(yaml_text(flag.default)) == flag.default, flag.path
