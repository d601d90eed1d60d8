"""kubeyaml reads kubectl's YAML itself and must give exactly what PyYAML's CSafeLoader gives:
the same values and types (checked through repr: True is not 1), the same documents, and
for anything it does not cover, PyYAML's own reading (per document) or PyYAML's error."""

from __future__ import annotations

import gc
import random
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from clusterdns.kube import kubeyaml
from clusterdns.kube.manifests import ManifestError, bulk_load, load_manifests
from clusterdns.kube.objects import ObjectError, parse_object
from helpers import ROOT

DATA = ROOT / "tests" / "data"


def pyyaml(text: str) -> list[Any]:
    return list(yaml.load_all(text, Loader=yaml.CSafeLoader))


class Fallback:
    """PyYAML for one document, counting the documents handed over."""

    def __init__(self) -> None:
        self.docs: list[str] = []

    def __call__(self, text: str) -> Any:
        self.docs.append(text)
        try:
            return yaml.load(text, Loader=yaml.CSafeLoader)
        except Exception:  # noqa: BLE001 - as manifests.py: PyYAML also raises ValueError (a bad date)
            raise kubeyaml.NotPlain from None


# read by kubeyaml itself, no document handed to PyYAML
OWN = {
    "kubectl service": """apiVersion: v1
kind: Service
metadata:
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: |
      {"apiVersion":"v1","kind":"Service"}
  creationTimestamp: "2024-05-01T10:00:00Z"
  labels:
    app: web
  name: web
  namespace: default
  resourceVersion: "12345"
spec:
  clusterIP: 10.96.0.10
  clusterIPs:
  - 10.96.0.10
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: 8080
  publishNotReadyAddresses: true
  sessionAffinity: None
status:
  loadBalancer: {}
""",
    "kind List, indented sequences": """apiVersion: v1
items:
  - apiVersion: v1
    kind: Service
    metadata:
      name: a
    spec:
      ports:
        - port: 53
          protocol: UDP
kind: List
metadata:
  resourceVersion: ""
""",
    "implicit types": "a: yes\nb: No\nc: on\nd: ~\ne: null\nf: 0x1F\ng: 017\nh: 1_000\ni: 1.5\nj: -.inf\n"
                      "k: 2001-12-14\nl: 12:30:00\nm: +1\nn: 1e5\no: 1.0e+5\np: 10.96.0.1\nq: fd00::1\n",
    "typed keys": "1: one\ntrue: t\nnull: n\n2.5: f\nkey: v\n",
    "quotes and comments": "# head\na: 'it''s'\nb: \"x: y # z\"\nc: plain # comment\n"
                           "d: a#b\ne:\n# between\nf:    spaced   \ng: ''\nh: \"\"\n",
    "empty values": "a:\nb: # nothing\nc: {}\nd: []\ne:\n- \n-\n- x\n",
    "nested sequences": "- - a\n  - b\n- -\n    c: 1\n  - d\n-\n  - e\n",
    "literal blocks": "a: |\n  one\n\n  two\n    deeper\n\nb: |-\n  stripped\n  \nc: |\nd: |\n\n   \n   text\n"
                      "e: |\n  spaces   \n     \nf: |-\n  # not a comment\n  ---- not a marker\n",
    "literal at end without line break": "a: |\n  x",
    "documents": "---\na: 1\n---\n# only a comment\n---\n---\nb: 2\n",
    "no document marker, trailing marker": "a: 1\n---\n",
    "comment only": "# nothing here\n\n",
    "empty": "",
    "crlf": "a: 1\r\nb:\r\n- x\r\n",
    "unicode": "name: café\nnote: 日本\n",
    "colons and dashes in scalars": "url: http://x:8080/a\nk:v: 1\nneg: -1\nq: ?x\nc: :x\n-x: y\n",
}

# handed to PyYAML document by document (or the file whole), same result
PYYAML = {
    "flow mapping": "metadata: {name: a, namespace: b}\nspec: {ports: [{port: 80}]}\n",
    "anchors and aliases": "a: &x {k: v}\nb: *x\n",
    "merge key": "base: &b {x: 1}\nd:\n  <<: *b\n  y: 2\n",
    "tags": "a: !!str 80\nb: !!int \"7\"\n",
    "escapes": "a: \"tab\\tx\\u00e9\"\n",
    "folded and kept blocks": "a: >\n  folded\n  text\nb: |+\n  kept\n\nc: |2\n    indented\n",
    "multi-line plain": "a: this is\n  continued\nb: 1\n",
    "multi-line quoted": "a: 'one\n  two'\n",
    "quoted keys": "\"a\": 1\n'b': 2\n",
    "comment after a quoted scalar": "a: 'x'  # why\n",
    "complex key": "? a\n: b\n",
    "root scalar and sequence": "--- text\n---\n- 1\n- 2\n",
    "directive": "%YAML 1.1\n---\na: 1\n",
    "document end": "a: 1\n...\n---\nb: 2\n",
    "tabs": "a:\tb\n",
    "byte order mark": "\ufeffa: 1\n",
    "one odd document among plain ones": "a: 1\n---\nb: &x 2\nc: *x\n---\nd: 3\n",
    "json": '{"apiVersion": "v1", "items": [{"kind": "Service", "n": 1}]}',
}

# not YAML: kubeyaml must never return something for these
BROKEN = {
    "mapping value in a plain scalar": "a: b: c\n",
    "sequence after a value": "a: 1\n- b\n",
    "bad indentation": "a:\n    b: 1\n  c: 2\n",
    "unterminated quote": "a: 'x\nb: 1\n",
    "control character": "a: \x01\n",
    "value indicator": "a: =\n",
    "undefined alias": "a: *nope\n",
    "bad timestamp": "a: 2001-13-40\n",
}


@pytest.mark.parametrize("text", OWN.values(), ids=OWN.keys())
def test_kubectl_yaml_is_read_here_exactly_as_pyyaml_reads_it(text: str) -> None:
    fallback = Fallback()
    assert repr(kubeyaml.load_all(text, fallback)) == repr(pyyaml(text))
    assert fallback.docs == []


@pytest.mark.parametrize("text", PYYAML.values(), ids=PYYAML.keys())
def test_everything_else_is_left_to_pyyaml(text: str) -> None:
    fallback = Fallback()
    try:
        got = kubeyaml.load_all(text, fallback)
    except kubeyaml.NotPlain:
        return  # the file goes to PyYAML whole
    assert fallback.docs, "read without PyYAML although outside kubectl's subset"
    assert repr(got) == repr(pyyaml(text))


@pytest.mark.parametrize("text", BROKEN.values(), ids=BROKEN.keys())
def test_what_pyyaml_rejects_is_never_read_here(text: str) -> None:
    with pytest.raises(Exception):  # noqa: B017 - YAMLError or ValueError: any rejection counts
        pyyaml(text)
    with pytest.raises(kubeyaml.NotPlain):
        kubeyaml.load_all(text, Fallback())


def test_a_yaml_error_after_plain_documents_still_names_its_line(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("a: 1\n---\nb: 2\n---\nc: [1, 2\nd: 3\n")
    with pytest.raises(ManifestError, match=r"c\.yaml:6:2: not valid YAML: did not find expected ','"):
        load_manifests([str(f)])


def test_the_test_cluster_printed_kubectl_style_is_read_without_pyyaml() -> None:
    text = yaml.safe_dump_all(pyyaml((DATA / "cluster.yaml").read_text()), default_flow_style=False)
    fallback = Fallback()
    assert repr(kubeyaml.load_all(text, fallback)) == repr(pyyaml(text))
    assert fallback.docs == []


@pytest.mark.parametrize("seed", range(4))
def test_random_documents_dumped_kubectl_style_read_the_same(seed: int) -> None:
    rnd = random.Random(seed)
    own = 0
    for _ in range(150):
        docs = [{"metadata": _random_value(rnd, 0), "spec": _random_value(rnd, 0)} for _ in range(rnd.randint(1, 3))]
        text = yaml.dump_all(docs, Dumper=_Dumper, default_flow_style=False, sort_keys=False,
                             allow_unicode=rnd.random() < 0.5, indent=rnd.choice([2, 4]), width=100_000,
                             explicit_start=rnd.random() < 0.5)
        if rnd.random() < 0.5:
            text = text.replace("\n  - ", "\n- ")  # kubectl's indentless sequences
        fallback = Fallback()
        try:
            got = kubeyaml.load_all(text, fallback)
        except kubeyaml.NotPlain:
            continue
        assert repr(got) == repr(pyyaml(text)), text
        own += not fallback.docs
    assert own > 10  # the odd scalars send many to PyYAML, but not all


@pytest.mark.parametrize("seed", range(4))
def test_damaged_kubectl_yaml_reads_the_same_or_goes_to_pyyaml(seed: int) -> None:
    rnd = random.Random(seed)
    base = (DATA / "cluster.yaml").read_text().split("\n")
    for _ in range(300):
        start = rnd.randrange(len(base))
        lines = base[start:start + rnd.randint(2, 30)]
        i = rnd.randrange(len(lines) + 1)
        if rnd.random() < 0.5:
            lines.insert(i, " " * rnd.choice([0, 1, 2, 4]) + rnd.choice(_DAMAGE_LINES))
        elif lines:
            j = min(i, len(lines) - 1)
            k = rnd.randrange(len(lines[j]) + 1)
            damage = rnd.choice([":", " ", "#", "-", "'", '"', "|", " #x", ": ", "&", "*"])
            lines[j] = lines[j][:k] + damage + lines[j][k:]
        text = "\n".join(lines) + "\n"
        try:
            want: Any = pyyaml(text)
        except Exception:  # noqa: BLE001 - any rejection: kubeyaml must reject it too
            want = None
        try:
            got = kubeyaml.load_all(text, Fallback())
        except kubeyaml.NotPlain:
            continue
        assert want is not None, f"read YAML PyYAML rejects: {text!r}"
        assert repr(got) == repr(want), text


_DAMAGE_LINES = ["a: |", "  x", "b: |-", "c: 'q''s'", 'd: "dq"', "e: {}", "- x", "-", "- - z", "g: yes", "h: 0x1F",
                 "# comment", "o:", "p: a:b", "q: 'open", "r: *x", "s: &y 1", "t: !!str 3", "<<: {}", "u: a: b",
                 "---", "...", "   ", "w: >", "? k", ": v", "y: -", '"k": v', "1: one", "on: off", "n: a # c"]
_SCALARS: list[Any] = [
    "a", "on", "yes", "No", "null", "~", "", " ", "1", "-1", "0x1f", "017", "1_0", "1.5", ".inf", ".nan", "1e5",
    "12:30", "2001-12-14", "10.96.0.1", "fd00::1", "a b", "a:b", "a: b", "a #b", "a#b", "-a", "- a", "?a", ":a",
    "'q'", '"d"', "x'y", "line\nbreak", "trail\n", "two\n\nlines\n", "  lead", "trail  ", "#c", "@x", "&x", "*x",
    "[x]", "{x}", "x,y", "=", "<<", "é", "日本", True, False, None, 0, 80, -3, 1.5]


def _random_value(rnd: random.Random, depth: int) -> Any:
    r = rnd.random()
    if depth > 3 or r < 0.4:
        return rnd.choice(_SCALARS)
    if r < 0.75:
        return {rnd.choice(_SCALARS[:48] + ["name", "port"]): _random_value(rnd, depth + 1)
                for _ in range(rnd.randint(0, 4))}
    return [_random_value(rnd, depth + 1) for _ in range(rnd.randint(0, 4))]


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks, as kubectl prints annotations."""


_Dumper.add_representer(
    str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))


def test_bulk_load_pauses_the_collector_and_restores_it() -> None:
    assert gc.isenabled()
    try:
        with bulk_load():
            assert not gc.isenabled()
        assert gc.isenabled()
        gc.disable()
        with bulk_load():
            pass
        assert not gc.isenabled()  # left as it was
    finally:
        gc.enable()
        gc.unfreeze()


@pytest.mark.parametrize(("ip", "want"), [("10.96.0.1", "10.96.0.1"), ("0.0.0.0", "0.0.0.0"),
                                           ("FD00:0:0::1", "fd00::1"), ("::ffff:1.2.3.4", "::ffff:102:304")])
def test_addresses_come_out_canonical(ip: str, want: str) -> None:
    obj = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"clusterIP": ip}}
    assert parse_object(obj).cluster_ips == (want,)  # type: ignore[union-attr]


@pytest.mark.parametrize("ip", ["010.0.0.1", "1.2.3", "256.0.0.1", " 10.0.0.1", "10.0.0.1\x00", "１.2.3.4"])  # noqa: RUF001 - fullwidth on purpose
def test_non_canonical_ipv4_is_still_a_named_field_error(ip: str) -> None:
    obj = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "n"},
           "spec": {"clusterIP": ip}}
    with pytest.raises(ObjectError) as exc:
        parse_object(obj)
    assert str(exc.value) == f"Service n/s: field spec.clusterIPs[0]: not an IP address: {ip!r}"


def test_plain_scalars_typed_as_pyyaml_types_them() -> None:
    """plain() skips the resolver for IPv4 and long words: it must stay exact."""
    for lst in yaml.resolver.Resolver.yaml_implicit_resolvers.values():
        for _, rx in lst:  # one alternative a line, or over several when the next does not start with `|`
            assert all(alt.count(r"\.") <= 1 for alt in re.split(r"\n\s*\|", rx.pattern)), rx.pattern
    for value in ["10.96.0.1", "1.5", "1.5.", "false", "falsey", "FALSE", "nulls", "Null", "OFF", "onion", "y", "yes",
                  "2001-12-14t21:59:43.10-05:00", "2001-12-14", "1_000.5", ".inf", "-.5", "12:30:00", "0x1F"]:
        assert repr(kubeyaml.plain(value)) == repr(yaml.load(value, Loader=yaml.CSafeLoader)), value


@pytest.mark.parametrize("seed", range(2))
def test_random_ipv6_addresses_come_out_as_ipaddress_prints_them(seed: int) -> None:
    import ipaddress
    rnd = random.Random(seed)
    for _ in range(2000):
        words = [rnd.choice([0, 0, 0, 1, 0xffff, rnd.randrange(65536)]) for _ in range(8)]
        ip = ipaddress.IPv6Address(sum(w << (16 * (7 - i)) for i, w in enumerate(words)))
        for text in (str(ip), ip.exploded, ip.exploded.upper()):
            obj = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"clusterIP": text}}
            assert parse_object(obj).cluster_ips == (str(ip),), text  # type: ignore[union-attr]


@pytest.mark.parametrize(("port", "field", "problem"), [
    ({"name": ["x"], "port": 80}, "spec.ports[0].name", "not a string"),
    ({"protocol": {}, "port": 80}, "spec.ports[0].protocol", "not a string"),
    ({"port": True}, "spec.ports[0].port", "not a number: True"),
    ({"port": 0}, "spec.ports[0].port", "out of range 1-65535: 0"),
    ({"name": "a"}, "spec.ports[0].port", "missing"),
])
def test_odd_ports_are_named_field_errors(port: dict[str, Any], field: str, problem: str) -> None:
    obj = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "n"},
           "spec": {"clusterIP": "10.0.0.1", "ports": [{"name": "ok", "port": 53}, port]}}
    with pytest.raises(ObjectError) as exc:
        parse_object(obj)
    assert str(exc.value) == f"Service n/s: field {field.replace('[0]', '[1]')}: {problem}"
