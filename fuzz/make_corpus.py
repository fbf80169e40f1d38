#!/usr/bin/env python3
"""Writes the seed inputs committed in fuzz/corpus/<target>/.

Standard library only. Run from anywhere: python3 fuzz/make_corpus.py
The bundles are fuzz/bundles/*.json (also the fixed bundles of the
xds_requests target) plus a few written here; the discovery request
sequences use the input format described in fuzz_targets/xds_requests.rs.
Inputs named regress-* were found by the fuzzers and are kept as they are.
"""

import hashlib
import json
import pathlib

FUZZ = pathlib.Path(__file__).resolve().parent
CORPUS = FUZZ / "corpus"

# ---------------------------------------------------------------- bundles

EXTRA_BUNDLES = {
    # Struct metadata (doubles, nesting), a STATIC cluster, a TCP proxy.
    "tcp_static.json": {
        "version": "tcp-1",
        "listeners": [{
            "name": "tcp",
            "address": {"socket_address": {"address": "0.0.0.0", "port_value": 9000}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.tcp_proxy",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                    "stat_prefix": "tcp",
                    "cluster": "db",
                },
            }]}],
        }],
        "clusters": [{
            "name": "db",
            "type": "STATIC",
            "connectTimeout": "0.250s",
            "lb_policy": "LEAST_REQUEST",
            "metadata": {"filter_metadata": {"sxds": {"weight": 0.30000000000000004, "tags": ["a", 1, True, None], "deep": {"x": [[1.5e300]]}}}},
            "load_assignment": {"cluster_name": "db", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "10.0.0.1", "port_value": 5432}}}, "load_balancing_weight": 3},
            ]}]},
        }],
    },
    # Just one cluster, no version: the version is derived from the content.
    "one_cluster.json": {"clusters": [{"name": "a", "connect_timeout": "1s"}]},
}


def quote_key(key):
    return key if key.replace("_", "").isalnum() else json.dumps(key)


def scalar(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if value == {}:
        return "{}"
    if value == []:
        return "[]"
    return json.dumps(value)  # a double-quoted JSON string is a YAML string


def yaml_lines(value, depth=0):
    """Block-style YAML for a JSON value (dicts and lists nest)."""
    pad = "  " * depth
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                yield f"{pad}{quote_key(key)}:"
                yield from yaml_lines(item, depth + 1)
            else:
                yield f"{pad}{quote_key(key)}: {scalar(item)}"
    else:
        for item in value:
            if isinstance(item, (dict, list)) and item:
                lines = list(yaml_lines(item, depth + 1))
                lines[0] = pad + "- " + lines[0][len(pad) + 2:]
                yield from lines
            else:
                yield f"{pad}- {scalar(item)}"


HAND_WRITTEN_YAML = {
    # Anchors and aliases, comments, plain scalars.
    "anchors.yaml": """\
# two clusters sharing their settings
version: yaml-1
clusters:
- name: one
  connect_timeout: &timeout 0.5s
  type: STATIC
- name: two
  connect_timeout: *timeout
  type: STATIC
""",
    "flow.yaml": "{version: flow, clusters: [{name: a, connect_timeout: 1s}, {name: b}]}\n",
}


def write_bundles():
    bundles = {path.name: json.loads(path.read_text()) for path in sorted((FUZZ / "bundles").glob("*.json"))}
    bundles.update(EXTRA_BUNDLES)
    for target in ["bundle_json", "bundle_formats"]:
        for name, bundle in bundles.items():
            write(target, name, json.dumps(bundle, indent=1).encode())
    for name, bundle in bundles.items():
        write("bundle_yaml", name.replace(".json", ".yaml"), ("\n".join(yaml_lines(bundle)) + "\n").encode())
    for name, text in HAND_WRITTEN_YAML.items():
        write("bundle_yaml", name, text.encode())


# ---------------------------------------------------------------- protobuf


def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number, payload):
    """A length-delimited field."""
    if isinstance(payload, str):
        payload = payload.encode()
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def uint_field(number, value):
    return varint(number << 3) + varint(value)


CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"

SWITCH, DELETE, LATEST_NONCE = 1, 2, 4


def request(type_url="", names=(), version="", nonce="", node=None, error=None):
    """An encoded envoy.service.discovery.v3.DiscoveryRequest."""
    out = b""
    if version:
        out += field(1, version)
    if node:
        out += field(2, field(1, node))  # Node.id
    for name in names:
        out += field(3, name)
    if type_url:
        out += field(4, type_url)
    if nonce:
        out += field(5, nonce)
    if error:
        out += field(6, uint_field(1, 3) + field(2, error))  # google.rpc.Status
    return out


def sequence(kind, steps):
    """kind: 0 ADS; 1 CDS, 2 EDS, 3 LDS, 4 RDS (ResourceType::ALL order)."""
    out = bytes([kind])
    for flags, message in steps:
        out += bytes([flags]) + len(message).to_bytes(2, "little") + message
    return out


ADS, ON_CDS, ON_EDS, ON_LDS, ON_RDS = 0, 1, 2, 3, 4
ACK = LATEST_NONCE


def envoy_on_ads():
    """Envoy's prelude and two bundle updates, every response ACKed."""
    eds = ["backend", "legacy"]
    steps = [
        (0, request(CDS, node="sidecar-app1")),
        (0, request(EDS, eds)),
        (ACK, request(CDS, version="v1")),
        (0, request(LDS)),
        (ACK, request(EDS, eds, version="v1")),
        (0, request(RDS, ["local_route"])),
        (ACK, request(LDS, version="v1")),
        (ACK, request(RDS, ["local_route"], version="v1")),
    ]
    update = [
        (SWITCH | ACK, request(CDS, version="v2")),
        (ACK, request(EDS, ["backend", "api"], version="v2")),
        (ACK, request(LDS, version="v2")),
        (ACK, request(RDS, ["local_route", "api_route"], version="v2")),
        (ACK, request(CDS, version="v2")),
    ]
    return sequence(ADS, steps + update + update)


def grpc_named_on_ads():
    """A proxyless client naming everything, with a NACK and a deletion."""
    steps = [
        (0, request(LDS, ["listener_0"], node="grpc-client")),
        (0, request(CDS, ["backend", "legacy"])),
        (ACK, request(LDS, ["listener_0"], version="v1")),
        (ACK, request(CDS, ["backend", "legacy"], version="v1")),
        (0, request(RDS, ["local_route"])),
        (ACK, request(RDS, ["local_route"], error="bad route")),
        (SWITCH, request(EDS, ["backend"])),
        (ACK, request(CDS, ["backend", "api"])),
        (DELETE | ACK, request(EDS, ["backend"], version="v2")),
        (SWITCH | ACK, request(LDS, ["listener_0", "listener_1"])),
        (ACK, request(CDS, ["*"])),
        (0, request(CDS, [])),
    ]
    return sequence(ADS, steps)


def single(kind, type_url, names):
    steps = [
        (0, request("", names, node="sidecar-x")),
        (ACK, request(type_url, names, version="v1")),
        (SWITCH, request(type_url, names, nonce="1")),
        (ACK, request(type_url, names, version="v2", error="rejected")),
        (SWITCH | ACK, request("", names + ["missing"])),
        (ACK, request("", [])),
        (0, request(EDS if kind != ON_EDS else CDS, ["stray"])),
    ]
    return sequence(kind, steps)


def write_requests():
    write("xds_requests", "envoy_ads", envoy_on_ads())
    write("xds_requests", "grpc_named_ads", grpc_named_on_ads())
    write("xds_requests", "cds_wildcard", single(ON_CDS, CDS, []))
    write("xds_requests", "eds_named", single(ON_EDS, EDS, ["backend", "legacy"]))
    write("xds_requests", "lds_named", single(ON_LDS, LDS, ["listener_0"]))
    write("xds_requests", "rds_named", single(ON_RDS, RDS, ["local_route", "api_route"]))


# ---------------------------------------------------------------- records


def cluster(name):
    return field(1, name)  # envoy.config.cluster.v3.Cluster.name


def stored_bundle(version, content_hash, resources):
    out = field(1, version) + field(2, content_hash)
    for number, name, value in resources:
        out += field(3, uint_field(1, number) + field(2, name) + field(3, value))
    return out


def record(payload):
    return b"SXD2" + hashlib.sha256(payload).digest() + payload


def write_records():
    payload = stored_bundle("v1", "ab" * 32, [(3, "a", cluster("a")), (3, "b", cluster("b")), (5, "a", field(1, "a"))])
    write("store_record", "current", record(payload))
    # The target also takes each input as a payload, checksummed for it.
    write("store_record", "payload", payload)
    write("store_record", "duplicate_names", stored_bundle("v2", "cd" * 32, [(3, "a", cluster("a")), (3, "a", cluster("a2"))]))
    # A pre-0.2 record: LegacyStoredBundle { bundle: Bundle { version, clusters }, content_hash }.
    legacy = field(1, field(1, "v0") + field(3, cluster("a")) + field(5, field(1, "a"))) + field(2, "ef" * 32)
    write("store_record", "legacy", legacy)


# ---------------------------------------------------------------- dictionaries


def dict_entry(data):
    if isinstance(data, str):
        data = data.encode()
    escaped = "".join(chr(b) if 0x20 <= b < 0x7F and b not in b'"\\' else f"\\x{b:02x}" for b in data)
    return f'"{escaped}"'


def write_dicts():
    names = sorted({"*", "listener_0", "listener_1", "local_route", "api_route", "backend", "legacy", "api", "missing"})
    xds = [field(4, url) for url in [CDS, EDS, LDS, RDS]]
    xds += [field(3, name) for name in names]
    xds += [field(5, str(n)) for n in range(1, 10)] + [field(1, f"v{n}") for n in range(1, 4)]
    xds += [field(6, field(2, "rejected")), field(2, field(1, "sidecar-a"))]
    types = ["envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
             "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
             "envoy.extensions.filters.http.router.v3.Router", "google.protobuf.Struct", "google.protobuf.Duration"]
    keys = ["version", "listeners", "clusters", "routes", "endpoints", "name", "cluster_name", "@type", "typed_config",
            "filter_chains", "filters", "address", "socket_address", "port_value", "connect_timeout", "type", "EDS",
            "STATIC", "eds_cluster_config", "eds_config", "ads", "rds", "route_config_name", "route_config",
            "virtual_hosts", "domains", "match", "prefix", "route", "cluster", "weighted_clusters", "lb_endpoints",
            "endpoint", "load_assignment", "metadata", "filter_metadata", "stat_prefix", "http_filters",
            "service_name", "typed_extension_protocol_options", "transport_socket"]
    bundle = [f'"{key}"' for key in keys] + [f'"type.googleapis.com/{t}"' for t in types] + ["1.5s", "null", "true", "-1", "1e309", "4294967296"]
    (FUZZ / "dict").mkdir(exist_ok=True)
    (FUZZ / "dict" / "xds_requests.dict").write_text("".join(f"{dict_entry(e)}\n" for e in xds))
    (FUZZ / "dict" / "bundle.dict").write_text("".join(f"{dict_entry(e)}\n" for e in bundle))


def write(target, name, data):
    (CORPUS / target).mkdir(parents=True, exist_ok=True)
    (CORPUS / target / name).write_bytes(data)


if __name__ == "__main__":
    # Files not written here (regress-*: inputs that once failed) are kept.
    write_bundles()
    write_requests()
    write_records()
    write_dicts()
    for directory in sorted(CORPUS.iterdir()):
        print(f"{directory.relative_to(FUZZ)}: {len(list(directory.iterdir()))} seeds")
