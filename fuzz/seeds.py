#!/usr/bin/env python3
"""Writes the hand-made seed inputs of every fuzz target into corpus/.

Each target reads a few leading bytes as parameters (see its source);
the rest is the frames, text or JSON of SPEC §2-§7.
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CALL, REPLY, EXCEPTION, ONEWAY, HEARTBEAT, STOP, STOP_CONFIRM = 1, 2, 3, 4, 20, 21, 22
TP = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def message(kind, name, seqid, body=b""):
    payload = struct.pack(">I", 0x80010000 | kind) + struct.pack(">i", len(name)) + name
    payload += struct.pack(">i", seqid) + body
    return struct.pack(">i", len(payload)) + payload


def old_header(name, kind, seqid, body=b""):
    payload = struct.pack(">i", len(name)) + name + bytes([kind]) + struct.pack(">i", seqid) + body
    return struct.pack(">i", len(payload)) + payload


def tstring(fid, s):
    return bytes([11]) + struct.pack(">h", fid) + struct.pack(">i", len(s)) + s


ARGS = tstring(1, b"hi") + b"\x00"
TRACED = ARGS[:-1] + tstring(32767, TP) + b"\x00"
EXC = tstring(1, b"no endpoint for echo:ping") + bytes([8]) + struct.pack(">hi", 2, 6) + b"\x00"

seeds = {
    "frame_decoder": {
        "calls": struct.pack(">HBB", 4096, 7, 0)
        + message(CALL, b"echo:ping", 1, ARGS)
        + message(HEARTBEAT, b"ping", 2)
        + message(ONEWAY, b"echo:note", 3, ARGS),
        "handed-over": struct.pack(">HBB", 64, 3, 9) + message(CALL, b"a:b", 9, b"\x00") * 3,
        "oversized": struct.pack(">HBB", 16, 1, 0) + message(CALL, b"echo:echo", 1, b"x" * 32),
        "negative-then-partial": struct.pack(">HBB", 100, 5, 2)
        + message(REPLY, b"ping", 1, b"\x00")
        + struct.pack(">i", -5),
        "empty-frame": struct.pack(">HBB", 100, 9, 0) + struct.pack(">i", 0) + b"\x00\x00",
    },
    "header": {
        "call": b"\x00" + struct.pack(">i", 77) + message(CALL, b"echo:ping", 5, ARGS)[4:],
        "nested-colons": b"\x00" + struct.pack(">i", -1) + message(CALL, b"a:b:c", 1, b"xyz")[4:],
        "bare": b"\x00" + struct.pack(">i", 3) + message(REPLY, b"ping", 9, b"\x00")[4:],
        "heartbeat-raw-prefix": b"\x01" + struct.pack(">i", 0) + message(HEARTBEAT, b"ping", 0),
        "old-header": b"\x00" + struct.pack(">i", 1) + old_header(b"ping", CALL, 9)[4:],
        "stop": b"\x00" + struct.pack(">i", 0) + message(STOP, b"worker_shutdonw", 0)[4:],
    },
    "control": {
        "read-exception": b"\x00" + EXC,
        "read-exception-unknown-fields": b"\x00"
        + bytes([15]) + struct.pack(">h", 3) + bytes([8]) + struct.pack(">iii", 2, 1, 2)
        + bytes([13]) + struct.pack(">h", 4) + bytes([11, 12]) + struct.pack(">i", 1)
        + struct.pack(">i", 1) + b"k" + b"\x00" + EXC,
        "write-exceptions": b"\x01" + struct.pack(">i", 42) + b"\x02" + b"\x04ping" + b"\x04echo"
        + b"no endpoint",
        "trace-call": b"\x02" + struct.pack(">i", 7) + bytes([len(TP)]) + TP + b"\x05hello" + ARGS,
        "trace-replace": b"\x02" + struct.pack(">i", 7) + b"\x03abc" + bytes([len(TP)]) + TP + TRACED,
        "trace-oneway": b"\x06" + struct.pack(">i", 1) + bytes([len(TP)]) + TP + b"\x00" + b"\x00",
        "trace-reply": b"\x0a" + struct.pack(">i", 1) + b"\x01x\x01y" + ARGS,
    },
    "endpoint_json": {
        "spec": b"\x00" + b"\x00\x05\x02\x09" + json.dumps({
            "service": "echo", "service_id": "127_0_0_1_5555", "frontend": "127.0.0.1:5555",
            "deploy_path": "/srv/echo", "code_url_version": "git@host:team/echo.git@1a2b3c4",
            "hostname": "web-3", "start_time": "2026-11-24 20:21:43"}).encode(),
        "minimal-local": b"\x10" + b"\x01\x04\x00\x00"
        + b'{"service":"echo","service_id":"tmpecho_sock","frontend":"/tmp/echo.sock","future":[1,{"x":null}]}',
        "with-product": b"\x02" + b"\x00\x00\x00\x00"
        + b'{"service":"echo","service_id":"x","frontend":"10.0.0.1:1","product":"online_x"}',
        "owner": b"\x10" + b"\x00\x00\x00\x00"
        + b'{"service":"echo","service_id":"x","frontend":"h:1","pid":1,"pid_start":0,"token":5,"product":"test"}',
        "drain-mark": b"\x03\x04test" + b"\x00\x00\x00\x00"
        + b'{"frontend":"127.0.0.1:5555","by":"ops@web-3","at":"2026-11-24 20:21:43"}',
    },
    "config_ini": {
        "proxy": b"zk=127.0.0.1:2181,127.0.0.2:2181\nproduct=test\nzk_session_timeout=30\nverbose=0\n"
        b"proxy_address=127.0.0.1:5550, /tmp/rpc.sock\nrpc_timeout=15\nfalcon_client=http://127.0.0.1:1988/v1/push\n"
        b"metrics_address=127.0.0.1:9100\nbalance=p2c\n",
        "lb": b"# an LB\nzk = local:/tmp/reg\nproduct = online_demo\nservice = echo\nfront_host = 10.1.2.3\n"
        b"front_port = 5555\nback_address = /tmp/echo-back.sock\nworker_pool_size = 4\nworker_prefetch=2\n"
        b"worker_command = python3 -m worker --name 'a b'\ndispatch = least_loaded\nqueue_size=100\n",
        "limits": b"max_frame_size=1024\nmax_inflight=8\nheartbeat_interval_ms=500\nheartbeat_timeout_ms=3000\n"
        b"drain_timeout=2.5\nframe_timeout=1\notlp_endpoint=127.0.0.1:4318\ntrace_sample_ratio=0.25\nunknown_key=1\n",
        "zk-auth": b"zk=zk1:2181\nzk_auth = digest:svc-echo:s3cr:et#comment\nservice=echo\nfront_sock=echo.sock\n",
    },
    "proxy_client": {
        "pipelined": b"\x07\x00" + message(CALL, b"echo:echo", 1, ARGS) + message(HEARTBEAT, b"ping", 2)
        + message(ONEWAY, b"echo:note", 3, ARGS) + message(CALL, b"echo:a:b", -4, b"\x00"),
        "unknown-and-down": b"\x01\x00" + message(CALL, b"nope:ping", 5, b"\x00")
        + message(CALL, b"down:ping", 6, b"\x00") + message(CALL, b"ping", 7, b"\x00"),
        "handed-over": b"\x03\x10" + message(CALL, b"echo:echo", 8, ARGS) * 2,
        "reply-from-client": b"\x02\x00" + message(REPLY, b"echo:echo", 9, b"\x00")
        + message(STOP, b"worker_stop", 0),
        "bad-header-last": b"\x05\x00" + message(CALL, b"echo:echo", 10, ARGS)
        + old_header(b"echo:ping", CALL, 11),
        "oversized": b"\x09\x00" + message(CALL, b"echo:echo", 12, ARGS) + struct.pack(">i", 1 << 20) + b"\x80\x01",
        "partial-at-eof": b"\x04\x00" + message(CALL, b"echo:echo", 13, ARGS) + message(CALL, b"echo:x", 1)[:9],
        "traced-call": b"\x06\x00" + message(CALL, b"echo:echo", 14, TRACED),
    },
}

for target, files in seeds.items():
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(d, "seed-" + name), "wb") as f:
            f.write(data)
print(sum(len(f) for f in seeds.values()), "seeds")
