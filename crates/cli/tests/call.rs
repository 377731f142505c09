//! `rpcctl call` through a real proxy to real services: the Echo demo
//! (`rpc-demo service`: results, its declared exception, a
//! `TApplicationException` it raises, a oneway call), the benchmark service
//! (`rpc-bench-server`: binary values), and an inventory service on the
//! SDK whose handler reads and writes with the Apache Thrift library
//! (structs from an included file, enums, containers, a declared
//! exception).

#[allow(dead_code)]
mod common;
#[allow(dead_code)]
mod stack;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::rpcctl;
use rpc_sdk::{handler_fn, HandlerError};
use rpc_testkit::{free_port, http_get};
use serde_json::{json, Value};
use stack::Stack;
use thrift::protocol::{
    TBinaryInputProtocol, TBinaryOutputProtocol, TFieldIdentifier, TInputProtocol, TMapIdentifier,
    TOutputProtocol, TStructIdentifier, TType,
};

/// A file of the workspace, by its path from the root.
fn file(path: &str) -> String {
    format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn the_demo_service_returns_results_raises_its_exception_and_takes_oneways() {
    let mut stack = Stack::start("").await;
    let ini = stack.ini(
        "echo.ini",
        &format!(
            "service = echo\nfront_host = 127.0.0.1\nfront_port = {}",
            free_port()
        ),
    );
    stack.spawn("rpc-demo", &["service", "-c", ini.to_str().unwrap()]);
    stack.routes("echo").await;
    let idl = file("examples/thrift/echo.thrift");
    let proxy = stack.address.clone();
    let call = |method: &'static str, args: &'static str| {
        let (idl, proxy) = (idl.clone(), proxy.clone());
        async move {
            rpcctl(&[
                "call", "echo", method, "--thrift", &idl, args, "--proxy", &proxy,
            ])
            .await
        }
    };

    let run = call("echo", r#"{"message": "héllo ✓"}"#).await;
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(run.json(), json!("héllo ✓"));
    // An i64 beyond a double's precision goes through exactly.
    let run = call("add", r#"{"a": 9007199254740993, "b": 1}"#).await;
    assert_eq!(run.json(), json!(9007199254740994i64), "{}", run.stderr);

    // The declared exception: its JSON on stdout, its message on stderr.
    let run = call("fail", r#"{"message": "boom"}"#).await;
    assert_eq!(run.code, Some(1));
    assert_eq!(
        run.json(),
        json!({"exception": "EchoError", "field": "error", "value": {"message": "boom"}})
    );
    assert!(
        run.stderr
            .contains("rpcctl: echo:fail raised EchoError: boom"),
        "{}",
        run.stderr
    );
    // An exception the service raises that the IDL does not declare.
    let run = call("add", r#"{"a": 9223372036854775807, "b": 1}"#).await;
    assert_eq!(run.code, Some(1));
    assert_eq!(
        run.json(),
        json!({
            "exception": "TApplicationException", "type": "UNKNOWN", "type_id": 0,
            "message": "9223372036854775807 + 1 overflows i64",
        })
    );

    // Oneway: nothing to print; the service gets it.
    let run = call("notify", r#"{"message": "fire and forget"}"#).await;
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(run.stdout, "");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !stack.output().contains("fire and forget") {
        assert!(Instant::now() < deadline, "no notify: {}", stack.output());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = http_get(stack.page, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("rpc_proxy_method_requests_total")
                && l.contains("method=\"notify\"")
                && l.contains("outcome=\"oneway\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );

    // The proxy from the config, and a deadline that passes.
    let client = stack.ini("client.ini", &format!("proxy_address = {proxy}"));
    let run = rpcctl(&[
        "-c",
        client.to_str().unwrap(),
        "call",
        "echo",
        "sleep",
        "--thrift",
        &idl,
        r#"{"ms": 3000}"#,
        "--timeout-ms",
        "300",
    ])
    .await;
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains(&format!(
            "no answer from the proxy at {proxy} within 300 ms"
        )),
        "{}",
        run.stderr
    );

    // Mistakes are caught before anything is sent.
    let run = call("nope", "{}").await;
    assert!(
        run.stderr
            .contains("service Echo has no method nope (it has: echo, add, sleep, fail, notify)"),
        "{}",
        run.stderr
    );
    let run = call("echo", r#"{"mesage": "x"}"#).await;
    assert!(
        run.stderr
            .contains(r#"arguments: echo() has no field "mesage" (it has: message)"#),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn binary_values_are_base64_and_proxy_errors_are_application_exceptions() {
    let mut stack = Stack::start("").await;
    let ini = stack.ini("bench.ini", "service = bench");
    let listen = format!("127.0.0.1:{}", free_port());
    stack.spawn(
        "rpc-bench-server",
        &["--listen", &listen, "-c", ini.to_str().unwrap()],
    );
    stack.routes("bench").await;
    let idl = file("bench/bench.thrift");
    let proxy = stack.address.as_str();
    let call = |service: &'static str, method: &'static str, args: &'static str| {
        let (idl, proxy) = (idl.clone(), proxy.to_string());
        async move {
            rpcctl(&[
                "call", service, method, "--thrift", &idl, args, "--proxy", &proxy,
            ])
            .await
        }
    };

    // "héllo\0\xff" in base64; padding is optional going in.
    let run = call("bench", "echo", r#"{"data": "aMOpbGxvAP8"}"#).await;
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(run.json(), json!("aMOpbGxvAP8="));
    let run = call("bench", "sleep", r#"{"data": "", "ms": 1}"#).await;
    assert_eq!(run.json(), json!(""), "{}", run.stderr);

    let run = call("bench", "fail", r#"{"data": "AA=="}"#).await;
    assert_eq!(run.code, Some(1));
    assert_eq!(
        run.json(),
        json!({
            "exception": "TApplicationException", "type": "UNKNOWN", "type_id": 0,
            "message": "bench: fail requested",
        })
    );
    assert!(
        run.stderr.contains(
            "rpcctl: bench:fail failed: TApplicationException UNKNOWN: bench: fail requested"
        ),
        "{}",
        run.stderr
    );

    // A service the proxy does not know (the IDL's only service has the
    // method).
    let run = call("nosuch", "echo", r#"{"data": ""}"#).await;
    assert_eq!(run.code, Some(1));
    let doc = run.json();
    assert_eq!(doc["type"], "UNKNOWN", "{doc}");
    assert!(doc["message"].as_str().unwrap().contains("nosuch"), "{doc}");

    let run = call("bench", "echo", r#"{"data": "not base64!"}"#).await;
    assert!(
        run.stderr
            .contains("arguments.data: binary is given in base64"),
        "{}",
        run.stderr
    );
}

/// The inventory service of `tests/data/inventory.thrift`: `put` answers
/// its item (the argument struct with its field id changed to 0, the
/// result's), `totals` reads and writes with the Apache Thrift library.
fn inventory() -> impl rpc_sdk::Handler {
    handler_fn(|method: String, body: Bytes| async move {
        match method.as_str() {
            "put" => {
                let mut reply = body.to_vec();
                if reply.get(..3) != Some(&[12, 0, 1][..]) {
                    return Err(HandlerError::internal("put takes 1: Item"));
                }
                reply[2] = 0;
                Ok(Bytes::from(reply))
            }
            "totals" => totals(&body).map_err(|e| HandlerError::internal(e.to_string())),
            other => Err(HandlerError::unknown_method(other)),
        }
    })
}

fn totals(body: &[u8]) -> thrift::Result<Bytes> {
    let mut input = TBinaryInputProtocol::new(body, true);
    let mut scores: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    input.read_struct_begin()?;
    loop {
        let field = input.read_field_begin()?;
        match (field.field_type, field.id) {
            (TType::Stop, _) => break,
            (TType::Map, Some(1)) => {
                let map = input.read_map_begin()?;
                for _ in 0..map.size {
                    let key = input.read_string()?;
                    let list = input.read_list_begin()?;
                    let values = (0..list.size)
                        .map(|_| input.read_i32())
                        .collect::<thrift::Result<Vec<i32>>>()?;
                    input.read_list_end()?;
                    scores.insert(key, values);
                }
                input.read_map_end()?;
            }
            (t, _) => input.skip(t)?,
        }
        input.read_field_end()?;
    }
    input.read_struct_end()?;

    let mut out = Vec::new();
    // The protocol writes into `out` through this borrow, which ends
    // with its last use.
    let mut o = TBinaryOutputProtocol::new(&mut out, true);
    o.write_struct_begin(&TStructIdentifier::new("totals_result"))?;
    match scores.iter().find(|(_, v)| v.is_empty()) {
        Some((name, _)) => {
            o.write_field_begin(&TFieldIdentifier::new("missing", TType::Struct, 1))?;
            o.write_struct_begin(&TStructIdentifier::new("Missing"))?;
            o.write_field_begin(&TFieldIdentifier::new("name", TType::String, 1))?;
            o.write_string(name)?;
            o.write_field_end()?;
            o.write_field_begin(&TFieldIdentifier::new("code", TType::I32, 2))?;
            o.write_i32(404)?;
            o.write_field_end()?;
            o.write_field_stop()?;
            o.write_struct_end()?;
        }
        None => {
            o.write_field_begin(&TFieldIdentifier::new("success", TType::Map, 0))?;
            o.write_map_begin(&TMapIdentifier::new(
                TType::String,
                TType::I64,
                scores.len() as i32,
            ))?;
            for (name, values) in &scores {
                o.write_string(name)?;
                o.write_i64(values.iter().map(|&v| i64::from(v)).sum())?;
            }
            o.write_map_end()?;
        }
    }
    o.write_field_end()?;
    o.write_field_stop()?;
    o.write_struct_end()?;
    Ok(Bytes::from(out))
}

#[tokio::test]
async fn structs_enums_and_containers_go_both_ways() {
    let stack = Stack::start("").await;
    let config = rpc_config::Config::parse(&format!(
        "zk=local:{}\nproduct=test\nservice=inventory\nfront_host=127.0.0.1\nfront_port=0",
        stack.registry_dir.display()
    ))
    .unwrap();
    let service = rpc_sdk::Service::new(config, inventory())
        .with_registry(stack.registry.clone())
        .start()
        .await
        .unwrap();
    stack.routes("inventory").await;
    let idl = format!("{}/tests/data/inventory.thrift", env!("CARGO_MANIFEST_DIR"));
    let call = |method: &'static str, args: Value| {
        let (idl, proxy) = (idl.clone(), stack.address.clone());
        async move {
            let args = args.to_string();
            rpcctl(&[
                "call",
                "inventory",
                method,
                "--thrift",
                &idl,
                &args,
                "--proxy",
                &proxy,
            ])
            .await
        }
    };

    let item = json!({
        "name": "hammer",
        "kind": "SUPPLY",
        "tags": ["steel", "tool"],
        "photo": "iVBORw0KGgo=",
        "shelves": {"-1": {"aisle": "attic"}, "3": {"aisle": "B", "level": 2}},
        "weights": [1.25, 0.5],
        "fragile": false,
    });
    let run = call("put", json!({ "item": item })).await;
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(run.json(), item);
    // An enum by number comes back by name; fields left out stay out.
    let run = call("put", json!({"item": {"name": "nail", "kind": 2}})).await;
    assert_eq!(
        run.json(),
        json!({"name": "nail", "kind": "PART"}),
        "{}",
        run.stderr
    );

    let run = call("totals", json!({"scores": {"a": [1, 2, 3], "b": [-5, 10]}})).await;
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(run.json(), json!({"a": 6, "b": 5}));
    let run = call("totals", json!({"scores": {"a": [1], "empty": []}})).await;
    assert_eq!(run.code, Some(1));
    assert_eq!(
        run.json(),
        json!({"exception": "Missing", "field": "missing", "value": {"name": "empty", "code": 404}})
    );
    assert!(
        run.stderr
            .contains(r#"inventory:totals raised Missing: {"code":404,"name":"empty"}"#),
        "{}",
        run.stderr
    );

    let run = call("put", json!({"item": {"kind": "TOOL"}})).await;
    assert!(
        run.stderr
            .contains("arguments.item: Item requires field name"),
        "{}",
        run.stderr
    );
    let run = call("put", json!({"item": {"name": "x", "kind": "SPOON"}})).await;
    assert!(
        run.stderr.contains(
            r#"arguments.item.kind: shared.Kind has no value "SPOON" (it has: TOOL, PART, SUPPLY)"#
        ),
        "{}",
        run.stderr
    );
    service.stop().await;
}
