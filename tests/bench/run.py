#!/usr/bin/env python3
"""Burrow load harness: every target on loopback, interleaved rounds, ratios to direct.

Usage: tests/bench/run.py [--rounds N] [--duration S] [--profiles small,lat,conn,bulk,h2]
                          [--targets direct,nginx-proxy,haproxy,rathole-tcp,rathole-tls,burrow,burrow-1t,burrow-pool,
                                     burrow-auth,burrow-jwt]
                          [--no-build]

Targets (all behind/around one nginx origin with one worker):
  direct       the origin itself (the physical limit of this machine)
  nginx-proxy  one nginx reverse-proxy hop (one worker, upstream keep-alive)
  haproxy      one haproxy hop (one thread, keep-alive)
  rathole-tcp  rathole server + client forwarding to the origin over plain TCP (the fastest Rust
               tunnel, unencrypted; built with `cargo install rathole` on first use)
  rathole-tls  the same over TLS (native-tls/OpenSSL, a throwaway certificate)
  burrow       burrow-edge + burrow connector (QUIC+TLS tunnel, no plugin)
  burrow-1t    the same tunnel through a second edge and connector run with --worker-threads 1
               (one runtime worker each, as nginx-proxy and haproxy get one worker/thread here)
  burrow-pool  the same edge and connector through a hostname routed to a pool holding that
               tunnel (least-outstanding steering): the per-request cost of steering
  burrow-auth  the same edge and connector through a hostname whose route runs the header-auth
               wasm plugin (fresh instance per request; wrk sends the key): the cost of a plugin
  burrow-jwt   the same through the jwt-auth plugin (HS256, fresh instance; wrk sends a token)

Profiles (wrk):
  small  64 keep-alive connections, 1 KiB GET: req/s, p50, p99
  lat    one connection, one request at a time: p50/p99 round trip
  conn   64 connections, a new connection per request (Connection: close)
  bulk   one connection downloading a 100 MiB file: MB/s
  h2     h2load, 64 cleartext HTTP/2 connections x 10 streams, 1 KiB GET: req/s, mean request time
         (direct and burrow only: the origin nginx on an h2c port, the edge's public listener)

For each sample the harness reads the CPU time (utime+stime from /proc/PID/stat) of the middle
layer's processes (edge + connector; the proxy's processes) before and after, and reports CPU
microseconds per request. It flags samples where other processes used more than 10% of a core.
Headline numbers are medians over rounds, with min-max, and ratios to `direct` in the same run.
Needs wrk, nginx, haproxy, curl and h2load; missing ones are installed with apt-get (Debian
packages wrk nginx-light haproxy curl nghttp2-client).
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST = "bench.test"


def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_taken(port, kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
            return False
        except OSError:
            return True


def wait_port(port, name, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name}: nothing listens on 127.0.0.1:{port} after {timeout}s")


def process_tree(pid):
    """pid and all its descendants (nginx/haproxy workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total


def system_busy_ticks():
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    values = [int(v) for v in parts]
    idle = values[3] + values[4]
    return sum(values[:8]) - idle


class Target:
    def __init__(self, name, port, host_header, procs, headers=(), h2_port=None):
        self.name, self.port, self.host_header, self.procs = name, port, host_header, procs
        self.headers = list(headers)  # extra request headers ("Name: value")
        self.h2_port = h2_port  # where it speaks cleartext HTTP/2, for the h2 profile (None: skipped)

    def middle_pids(self):
        pids = []
        for p in self.procs:
            pids.extend(process_tree(p.pid))
        return pids


STARTED = []  # every process we start, so that any exit path stops them all


def start(cmd, log, **kw):
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **kw)
    STARTED.append(p)
    return p


def nginx_conf(work, name, port, body):
    conf = work / f"{name}.conf"
    conf.write_text(f"""
worker_processes 1;
pid {work}/{name}.pid;
error_log {work}/{name}.error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_requests 1000000;
  client_body_temp_path {work}/tmp; proxy_temp_path {work}/tmp; fastcgi_temp_path {work}/tmp;
  uwsgi_temp_path {work}/tmp; scgi_temp_path {work}/tmp;
  server {{ listen 127.0.0.1:{port}; {body} }}
}}
""")
    return conf


def setup(args, work, logs):
    (work / "tmp").mkdir()
    (work / "www").mkdir()
    (work / "www" / "1k.bin").write_bytes(os.urandom(1024))
    with open(work / "www" / "100m.bin", "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(100):
            f.write(chunk)

    ports = {name: free_port() for name in ["direct", "direct-h2", "nginx-proxy", "haproxy", "burrow"]}
    tunnel_port = free_port(socket.SOCK_DGRAM)
    for name, port in ports.items():
        if port_taken(port):
            sys.exit(f"port {port} for {name} is taken; refusing to start")

    origin_conf = nginx_conf(work, "origin", ports["direct"], f"root {work}/www;")
    # The same origin also speaks cleartext HTTP/2 (prior knowledge) on a port of its own, for the
    # `h2` profile's direct baseline (nginx 1.22 cannot serve both on one cleartext port).
    text = origin_conf.read_text().replace(
        "\n}", f"\n  server {{ listen 127.0.0.1:{ports['direct-h2']} http2; root {work}/www; }}\n}}")
    origin_conf.write_text(text)
    origin = start(["nginx", "-c", str(origin_conf), "-g", "daemon off;"], logs)
    wait_port(ports["direct"], "origin nginx")
    targets = {"direct": Target("direct", ports["direct"], None, [], h2_port=ports["direct-h2"])}

    if "nginx-proxy" in args.targets:
        conf = nginx_conf(work, "proxy", ports["nginx-proxy"],
                          f"location / {{ proxy_pass http://origin; proxy_http_version 1.1; "
                          f"proxy_set_header Connection \"\"; proxy_buffering on; }}")
        text = conf.read_text().replace("http {", f"http {{\n  upstream origin {{ server 127.0.0.1:{ports['direct']}; keepalive 128; }}")
        conf.write_text(text)
        p = start(["nginx", "-c", str(conf), "-g", "daemon off;"], logs)
        wait_port(ports["nginx-proxy"], "nginx-proxy")
        targets["nginx-proxy"] = Target("nginx-proxy", ports["nginx-proxy"], None, [p])

    if "haproxy" in args.targets:
        conf = work / "haproxy.cfg"
        conf.write_text(f"""
global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend f
  bind 127.0.0.1:{ports['haproxy']}
  default_backend b
backend b
  http-reuse always
  server o 127.0.0.1:{ports['direct']}
""")
        p = start(["haproxy", "-f", str(conf)], logs)
        wait_port(ports["haproxy"], "haproxy")
        targets["haproxy"] = Target("haproxy", ports["haproxy"], None, [p])

    for name in ("rathole-tcp", "rathole-tls"):
        if name in args.targets:
            targets[name] = start_rathole(name, work, logs, ports["direct"])

    if any(t.startswith("burrow") for t in args.targets):
        edge_bin = ROOT / "target" / "dist" / "burrow-edge"
        burrow_bin = ROOT / "target" / "dist" / "burrow"
        env = dict(os.environ, BURROW_HOME=str(work / "home"), RUST_LOG="warn")
        tunnels = work / "tunnels.yml"
        subprocess.run([str(edge_bin), "tunnel", "add", "bench", "--tunnels", str(tunnels), "--hostname", HOST,
                        "--edge", f"127.0.0.1:{tunnel_port}", "--credentials-dir", str(work / "creds"),
                        "--data-dir", str(work / "edge")], env=env, check=True, stdout=subprocess.DEVNULL)
        creds = next((work / "creds").glob("*.json"))
        # `routes` is the file's last list: append a route with a plugin and one to a pool, then
        # the pool.
        auth = '{"header": "x-api-key", "keys": ["bench-key"]}'
        jwt = '{"secret": "bench-secret", "audiences": ["bench"], "forward-claims": {"sub": "x-user"}}'
        with open(tunnels, "a") as f:
            f.write(f"- hostname: auth.{HOST}\n  tunnel: bench\n  plugins:\n  - plugin: header-auth\n"
                    f"    config: '{auth}'\n")
            f.write(f"- hostname: jwt.{HOST}\n  tunnel: bench\n  plugins:\n  - plugin: jwt-auth\n"
                    f"    config: '{jwt}'\n")
            f.write(f"- hostname: pool.{HOST}\n  pool: bench-pool\n"
                    "pools:\n- name: bench-pool\n  spec:\n    origins:\n    - tunnel: bench\n"
                    "    steering: least-outstanding\n")
        plugins = ROOT / "plugins" / "target" / "wasm32-wasip2" / "release"

        def start_burrow(name, http_port, tunnel_port, edge_args, connector_args):
            """An edge and a connector for the bench tunnel, once a request gets through them."""
            edge = start([str(edge_bin), "run", "--http", f"127.0.0.1:{http_port}", "--https", "off",
                          "--admin", "off", "--tunnel", f"127.0.0.1:{tunnel_port}", "--tunnels", str(tunnels),
                          "--data-dir", str(work / name), *edge_args], logs, env=env)
            wait_port(http_port, name)
            connector = start([str(burrow_bin), "tunnel", "run", "--credentials-file", str(creds), "--url",
                               f"http://127.0.0.1:{ports['direct']}", *connector_args], logs, env=env)
            deadline = time.time() + 20
            while True:
                r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", f"Host: {HOST}",
                                    f"http://127.0.0.1:{http_port}/1k.bin"], capture_output=True, text=True)
                if r.stdout == "200":
                    return [edge, connector]
                if time.time() > deadline:
                    raise RuntimeError(f"the {name} tunnel did not come up (last status {r.stdout!r})")
                time.sleep(0.2)

        plugin_args = ["--plugin", f"header-auth={plugins / 'header_auth.wasm'}",
                       "--plugin", f"jwt-auth={plugins / 'jwt_auth.wasm'}"]
        edge, connector = start_burrow("edge", ports["burrow"], tunnel_port, plugin_args, [])
        targets["burrow"] = Target("burrow", ports["burrow"], HOST, [edge, connector], h2_port=ports["burrow"])
        targets["burrow-pool"] = Target("burrow-pool", ports["burrow"], f"pool.{HOST}", [edge, connector])
        targets["burrow-auth"] = Target("burrow-auth", ports["burrow"], f"auth.{HOST}", [edge, connector],
                                        headers=["x-api-key: bench-key"])
        token = hs256({"sub": "bench", "aud": "bench", "exp": int(time.time()) + 86400}, b"bench-secret")
        targets["burrow-jwt"] = Target("burrow-jwt", ports["burrow"], f"jwt.{HOST}", [edge, connector],
                                       headers=[f"Authorization: Bearer {token}"])
        if "burrow-1t" in args.targets:
            # A second edge and connector for the same tunnel, one runtime worker each: on a
            # 2-core machine shared with wrk and the origin, extra workers mostly add wake-ups.
            port, udp = free_port(), free_port(socket.SOCK_DGRAM)
            one = ["--worker-threads", "1"]
            # The same tunnel identity (certificate and key) as the first edge: the credentials pin it.
            shutil.copytree(work / "edge", work / "edge-1t")
            procs = start_burrow("edge-1t", port, udp, one, one + ["--edge", f"127.0.0.1:{udp}"])
            targets["burrow-1t"] = Target("burrow-1t", port, HOST, procs, h2_port=port)

    return targets, [origin] + [p for t in targets.values() for p in t.procs]


def rathole_binary():
    """rathole from PATH, or built once into target/bench-tools (cargo install, a few minutes)."""
    found = shutil.which("rathole")
    if found:
        return found
    root = ROOT / "target" / "bench-tools"
    binary = root / "bin" / "rathole"
    if not binary.exists():
        print("building rathole (cargo install rathole, once)", file=sys.stderr)
        subprocess.run(["cargo", "install", "rathole", "--root", str(root)], check=True)
    return str(binary)


def start_rathole(name, work, logs, origin_port):
    """A rathole server and client on loopback forwarding a port to the origin, over plain TCP or
    TLS (a throwaway CA and certificate made with openssl)."""
    control, visitor = free_port(), free_port()
    tls = name.endswith("tls")
    server_transport = client_transport = ""
    if tls:
        d = work / name
        d.mkdir()
        openssl = lambda *a: subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True)
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
                "-days", "2", "-subj", "/CN=bench-ca")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
                "-subj", "/CN=localhost")
        (d / "san.ext").write_text("subjectAltName=DNS:localhost\n")
        openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
        openssl("pkcs12", "-export", "-out", "identity.pfx", "-inkey", "server.key", "-in", "server.crt",
                "-password", "pass:bench")
        server_transport = (f'[server.transport]\ntype = "tls"\n[server.transport.tls]\n'
                            f'pkcs12 = "{d}/identity.pfx"\npkcs12_password = "bench"\n')
        client_transport = (f'[client.transport]\ntype = "tls"\n[client.transport.tls]\n'
                            f'trusted_root = "{d}/ca.pem"\nhostname = "localhost"\n')
    server = work / f"{name}-server.toml"
    server.write_text(f'[server]\nbind_addr = "127.0.0.1:{control}"\n{server_transport}'
                      f'[server.services.web]\ntoken = "bench"\nbind_addr = "127.0.0.1:{visitor}"\n')
    client = work / f"{name}-client.toml"
    client.write_text(f'[client]\nremote_addr = "127.0.0.1:{control}"\n{client_transport}'
                      f'[client.services.web]\ntoken = "bench"\nlocal_addr = "127.0.0.1:{origin_port}"\n')
    binary = rathole_binary()
    env = dict(os.environ, RUST_LOG="warn")
    procs = [start([binary, "--server", str(server)], logs, env=env)]
    wait_port(control, f"{name} server")
    procs.append(start([binary, "--client", str(client)], logs, env=env))
    deadline = time.time() + 20
    while True:
        r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                            f"http://127.0.0.1:{visitor}/1k.bin"], capture_output=True, text=True)
        if r.stdout == "200":
            return Target(name, visitor, None, procs)
        if time.time() > deadline:
            raise RuntimeError(f"{name} did not come up (last status {r.stdout!r})")
        time.sleep(0.2)


def hs256(claims, secret):
    """A JWT signed with HMAC-SHA256, for the burrow-jwt target."""
    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=")
    signing_input = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + b"." + b64(json.dumps(claims).encode())
    signature = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + b64(signature)).decode()


PROFILES = {
    "small": dict(path="/1k.bin", conns=64, threads=2, extra=[]),
    "lat": dict(path="/1k.bin", conns=1, threads=1, extra=[]),
    "conn": dict(path="/1k.bin", conns=64, threads=2, extra=["-H", "Connection: close"]),
    "bulk": dict(path="/100m.bin", conns=1, threads=1, extra=[]),
    # h2load: 64 HTTP/2 connections, 10 concurrent streams each (h2c, prior knowledge).
    "h2": dict(path="/1k.bin", conns=64, threads=2, extra=[]),
}


def to_seconds(text):
    m = re.match(r"([\d.]+)(us|ms|s|m)", text)
    value, unit = float(m.group(1)), m.group(2)
    return value * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def to_bytes(text):
    m = re.match(r"([\d.]+)([KMG]?B)", text)
    return float(m.group(1)) * {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[m.group(2)]


def sample(target, profile, duration, own_pids):
    spec = PROFILES[profile]
    if profile == "h2":
        return sample_h2(target, spec, duration, own_pids)
    cmd = ["wrk", "--latency", "-t", str(spec["threads"]), "-c", str(spec["conns"]), "-d", f"{duration}s"]
    if target.host_header:
        cmd += ["-H", f"Host: {target.host_header}"]
    for header in target.headers:
        cmd += ["-H", header]
    cmd += spec["extra"] + [f"http://127.0.0.1:{target.port}{spec['path']}"]
    middle = target.middle_pids()
    known = process_tree(os.getpid()) + own_pids
    before_mid, before_known, before_sys = cpu_ticks(middle), cpu_ticks(known), system_busy_ticks()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    after_mid, after_known, after_sys = cpu_ticks(middle), cpu_ticks(known + [p for p in process_tree(os.getpid())]), system_busy_ticks()
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    transfer = re.search(r"Transfer/sec:\s+(\S+)", out).group(1)
    other = (after_sys - before_sys) - (after_known - before_known) - (after_mid - before_mid)
    busy = other / CLK_TCK / duration > 0.10
    return dict(
        rps=requests / duration,
        p50=to_seconds(lat["50"]), p99=to_seconds(lat["99"]),
        mbps=to_bytes(transfer) / 1e6,
        cpu_us=(after_mid - before_mid) / CLK_TCK / max(requests, 1) * 1e6 if middle else None,
        errors=int(errors.group(1)) if errors else 0,
        socket_errors=socket_errors.group(1) if socket_errors else None,
        busy=busy,
    )


def sample_h2(target, spec, duration, own_pids):
    """One h2load sample: req/s, mean request time (as p50; h2load has no percentiles), CPU."""
    if target.h2_port is None:
        return None
    cmd = ["h2load", "-D", str(duration), "-c", str(spec["conns"]), "-m", "10", "-t", str(spec["threads"])]
    if target.host_header:
        # HTTP/2 names the host in :authority; a Host header that differs from it is refused.
        cmd += ["-H", f":authority: {target.host_header}"]
    for header in target.headers:
        cmd += ["-H", header.lower()]
    cmd += [f"http://127.0.0.1:{target.h2_port}{spec['path']}"]
    middle = target.middle_pids()
    before_mid, before_sys = cpu_ticks(middle), system_busy_ticks()
    before_known = cpu_ticks(process_tree(os.getpid()) + own_pids)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    after_mid, after_sys = cpu_ticks(middle), system_busy_ticks()
    after_known = cpu_ticks(process_tree(os.getpid()) + own_pids)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    if not done:
        raise RuntimeError(f"h2load output not understood:\n{out[-2000:]}")
    requests = int(done.group(1))
    failed = int(done.group(3)) + int(re.search(r"(\d+) errored", out).group(1))
    codes = re.search(r"status codes: \d+ 2xx, \d+ 3xx, (\d+) 4xx, (\d+) 5xx", out)
    failed += int(codes.group(1)) + int(codes.group(2)) if codes else 0
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    other = (after_sys - before_sys) - (after_known - before_known) - (after_mid - before_mid)
    return dict(
        rps=requests / duration,
        p50=to_seconds(mean.group(1)) if mean else float("nan"), p99=float("nan"),
        mbps=0.0,
        cpu_us=(after_mid - before_mid) / CLK_TCK / max(requests, 1) * 1e6 if middle else None,
        errors=failed,
        socket_errors=None,
        busy=other / CLK_TCK / duration > 0.10,
    )


def fmt_range(values, scale=1.0, digits=0):
    med = statistics.median(values) * scale
    return f"{med:,.{digits}f} ({min(values) * scale:,.{digits}f}-{max(values) * scale:,.{digits}f})"


# Debian packages of the tools and peers: installed on first use when missing.
PACKAGES = {"wrk": "wrk", "nginx": "nginx-light", "haproxy": "haproxy", "curl": "curl", "h2load": "nghttp2-client"}


def install_peers():
    missing = [pkg for tool, pkg in PACKAGES.items() if not shutil.which(tool)]
    if not missing:
        return
    command = ["apt-get", "install", "-y", "--no-install-recommends"] + missing
    if os.geteuid() != 0:
        command = ["sudo"] + command
    print(f"installing {' '.join(missing)}: {' '.join(command)}", file=sys.stderr)
    try:
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"could not install {' '.join(missing)} ({e}); install them and run again")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per sample")
    parser.add_argument("--profiles", default="small,lat,conn,bulk,h2")
    parser.add_argument("--targets", default="direct,nginx-proxy,haproxy,rathole-tcp,rathole-tls,burrow,burrow-1t")
    parser.add_argument("--no-build", action="store_true", help="use the existing dist-profile binaries")
    args = parser.parse_args()
    args.targets = args.targets.split(",")
    profiles = args.profiles.split(",")
    install_peers()
    if any(t.startswith("burrow") for t in args.targets) and not args.no_build:
        # The profile operators deploy (see Cargo.toml), not the quicker `release`.
        subprocess.run(["cargo", "build", "--profile", "dist", "-p", "burrow-edge", "-p", "burrow-connector"],
                       cwd=ROOT, check=True)
        subprocess.run(["cargo", "build", "--release", "--target", "wasm32-wasip2", "--manifest-path",
                        str(ROOT / "plugins" / "Cargo.toml")], cwd=ROOT, check=True)

    work = Path(tempfile.mkdtemp(prefix="burrow-bench-"))
    work.chmod(0o755)  # nginx workers drop privileges and must read the files
    logs = open(work / "processes.log", "w")
    try:
        targets, procs = setup(args, work, logs)
        own = [p.pid for p in procs]
        order = [t for t in args.targets if t in targets]
        results = {(t, p): [] for t in order for p in profiles}
        for r in range(args.rounds):
            for profile in profiles:
                for name in order:  # interleaved: A B C A B C ...
                    s = sample(targets[name], profile, args.duration, own)
                    if s is None:  # this target does not take part in this profile
                        continue
                    results[(name, profile)].append(s)
                    flag = " BUSY" if s["busy"] else ""
                    err = f" errors={s['errors']}" if s["errors"] else ""
                    print(f"round {r + 1} {profile:5} {name:12} {s['rps']:>10,.0f} req/s{err}{flag}", file=sys.stderr)
        report(results, order, profiles)
    except RuntimeError as e:
        logs.flush()
        print((work / "processes.log").read_text()[-3000:], file=sys.stderr)
        sys.exit(f"error: {e}")
    finally:
        for p in STARTED:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except OSError:
                pass
        time.sleep(0.5)
        shutil.rmtree(work, ignore_errors=True)


def report(results, order, profiles):
    print()
    for profile in profiles:
        direct = results.get(("direct", profile))
        print(f"## {profile}")
        if profile == "bulk":
            print(f"| target | MB/s median (min-max) | x direct | middle CPU us/req |")
            print("|---|---|---|---|")
        else:
            print(f"| target | req/s median (min-max) | x direct | p50 ms | p99 ms | middle CPU us/req |")
            print("|---|---|---|---|---|---|")
        for name in order:
            samples = results[(name, profile)]
            if not samples:
                continue
            key = "mbps" if profile == "bulk" else "rps"
            values = [s[key] for s in samples]
            ratio = statistics.median(values) / statistics.median([s[key] for s in direct]) if direct else float("nan")
            cpus = [s["cpu_us"] for s in samples if s["cpu_us"] is not None]
            cpu = fmt_range(cpus, digits=1) if cpus else "-"
            busy = " (busy)" if any(s["busy"] for s in samples) else ""
            errors = sum(s["errors"] for s in samples)
            err = f" ({errors} non-2xx)" if errors else ""
            if profile == "bulk":
                print(f"| {name}{busy}{err} | {fmt_range(values)} | {ratio:.2f} | {cpu} |")
            else:
                p50 = statistics.median(s["p50"] for s in samples) * 1e3
                p99 = statistics.median(s["p99"] for s in samples) * 1e3
                print(f"| {name}{busy}{err} | {fmt_range(values)} | {ratio:.2f} | {p50:.2f} | {p99:.2f} | {cpu} |")
        print()


if __name__ == "__main__":
    main()
