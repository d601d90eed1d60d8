"""The config file: every example loads, errors name file, line, key path and what was
expected, flags the user typed win over the file, and every option is documented.

CoreDNS's test/readme_test.go is the model: examples that do not load are bugs.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from clusterdns.settings import config as C
from clusterdns.app.cluster import ServeOptions
from clusterdns.cli import build_parser
from helpers import ROOT

CONFIG_DIR = ROOT / "config"
README = ROOT / "README.md"
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
    missing = [key for key, _, _ in C.reference(mode) if not re.search(rf"^\s*{key.split('.')[-1]}:", text, re.M)]
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


def test_every_readme_config_snippet_loads() -> None:
    snippets = readme_snippets(README.read_text())
    assert snippets, "README.md's Configuration section has yaml config snippets"
    for line, body in snippets:
        data = C.parse_text(body, f"README.md:{line}")
        C.parse(data, C.guess_mode(data), f"README.md (snippet at line {line})")


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
    parser = build_parser()
    args = parser.parse_args(argv)
    mode = args.command
    return C.apply_flags(C.load(path, mode), args, C.explicit_flags(parser, argv))


def test_flags_given_win_even_when_they_equal_the_default(tmp_path: Path) -> None:
    cfg = _merged(["serve", "--ttl", "5", "--upstream", "10.0.0.9"], "ttl: 30\nzone: corp.local\nupstreams: [10.0.0.1]\n",
                  tmp_path)
    assert cfg.ttl == 5  # typed, although 5 is the default
    assert cfg.zone == "corp.local"  # not typed: the file's value stays
    assert cfg.upstreams == ["10.0.0.9"]


def test_flags_that_negate_and_stubs(tmp_path: Path) -> None:
    cfg = _merged(["serve", "--no-loop-detect", "--stub", "acme.local=10.0.0.1,10.0.0.2"], "loop_detect: true\n", tmp_path)
    assert cfg.loop_detect is False and cfg.stub_domains == {"acme.local": ["10.0.0.1", "10.0.0.2"]}
    nc = _merged(["node-cache", "--policy", "sequential", "--serve-stale", "0"], "forward:\n  policy: random\n", tmp_path)
    assert nc.forward.policy == "sequential" and nc.cache.serve_stale == 0.0


def test_flag_values_are_checked_like_file_values() -> None:
    args = argparse.Namespace(ttl=99999, query_log_sample=0)
    with pytest.raises(C.ConfigError) as exc:
        C.apply_flags(C.ServeConfig(), args, {"ttl", "query_log_sample"})
    assert exc.value.problems == ["command line: --query-log-sample: expected at least 1, got 0 (integer)",
                                  "command line: --ttl: expected 0..3600 seconds (CoreDNS's range), got 99999 (integer)"]


@pytest.mark.parametrize("mode", C.MODES)
def test_every_flag_has_a_config_key(mode: str) -> None:
    assert C.unmapped_flags(build_parser(), mode) == []


def test_every_serve_option_comes_from_the_config_with_the_same_default() -> None:
    """A ServeOptions field added without a config key (or with another default) fails here."""
    kwargs = C.ServeConfig().options_kwargs()
    set_by_cli = {"config", "reload"}
    assert {f.name for f in fields(ServeOptions)} - set_by_cli == set(kwargs)
    from_config, built_in = ServeOptions(**kwargs), ServeOptions()
    differ = [f.name for f in fields(ServeOptions)
              if getattr(from_config, f.name) != getattr(built_in, f.name) and f.name not in ("cache_opts", "forward_opts")]
    assert differ == []


# ----------------------------------------------------------------------- documentation


@pytest.mark.parametrize("mode", C.MODES)
def test_every_option_has_a_default_and_a_reason(mode: str) -> None:
    rows = C.reference(mode)
    assert len(rows) > 20
    undocumented = [key for key, _, why in rows if len(why) < 15]
    assert not undocumented


@pytest.mark.parametrize("mode", C.MODES)
def test_reference_defaults_round_trip(mode: str) -> None:
    """The README table's defaults, written back as YAML, give the built-in defaults."""
    doc: dict = {}
    for key, default, _ in C.reference(mode):
        *parents, leaf = key.split(".")
        node = doc
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(default)
    assert C.parse(doc, mode) == C.SCHEMAS[mode]()


def test_forwarding_defaults_match_the_code_s() -> None:
    """The config's cache and forward defaults are what cluster_forwarding uses without them."""
    import inspect

    from clusterdns.cache.cache import ResponseCache
    from clusterdns.forward.forwarder import Forwarder
    from clusterdns.forward.forwarding import SERVE_CACHE

    cache = {k: p.default for k, p in inspect.signature(ResponseCache).parameters.items()
             if k not in ("fetch", "timer")} | SERVE_CACHE
    assert C.ServeConfig().cache_opts() == cache
    forward = {k: p.default for k, p in inspect.signature(Forwarder).parameters.items()
               if k not in ("upstreams", "except_zones", "name")}
    assert C.ServeConfig().forward_opts() == forward
