//! Published weights by name (`cifar:resnet20`, `torchvision:resnet50`) against a local
//! HTTP server standing in for the publishers (`RESNET_WEIGHTS_MIRROR`), with torch's cache
//! in a temporary `TORCH_HOME`.

mod common;

use common::cli::{assert_error, p};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

/// Serves `files` by name (`GET /<name>`), 404 otherwise; returns the base URL.
fn serve(files: HashMap<String, Vec<u8>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_string();
            let (status, body) = match files.get(&path) {
                Some(body) => ("200 OK", body.as_slice()),
                None => ("404 Not Found", &b"not here"[..]),
            };
            let head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(body);
        }
    });
    format!("http://{addr}")
}

/// A URL where nothing listens.
fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

fn resnet_with(mirror: &str, torch_home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(args)
        .env("RESNET_WEIGHTS_MIRROR", mirror)
        .env("TORCH_HOME", torch_home)
        .output()
        .unwrap()
}

#[test]
fn published_cifar_resnet20_by_name_scores_without_flags() {
    let (Some(th), Some(data)) = (
        common::shared_data("resnet-cifar10-pretrained/resnet20-12fca82f.th"),
        common::shared_data("cifar-10-official-partial/test_batch.first1017.bin"),
    ) else {
        return;
    };
    let home = common::temp_dir("registry_cifar");
    let mirror = serve(HashMap::from([("resnet20-12fca82f.th".to_string(), std::fs::read(&th).unwrap())]));
    // No --model, no --norm: the registry knows both.
    let eval = ["eval", "--weights", "cifar:resnet20", "--data", p(&data)];
    let out = resnet_with(&mirror, &home, &eval);
    let text = common::cli::ok(&out);
    assert!(text.lines().any(|l| l == "top-1: 91.64% (932/1017)"), "{text}");
    let cached = home.join("hub/checkpoints/resnet20-12fca82f.th");
    assert_eq!(std::fs::read(&cached).unwrap(), std::fs::read(&th).unwrap());

    // Offline now: the cached copy serves.
    let text = common::cli::ok(&resnet_with(&dead_url(), &home, &eval));
    assert!(text.contains("(932/1017)"), "{text}");

    // A damaged cached copy is noticed and fetched again.
    std::fs::write(&cached, b"half a file").unwrap();
    let out = resnet_with(&mirror, &home, &eval);
    let text = common::cli::ok(&out);
    assert!(text.contains("(932/1017)"), "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not match its SHA-256 prefix 12fca82f"));
}

#[test]
fn corrupt_downloads_and_no_network_are_clear_errors() {
    let home = common::temp_dir("registry_corrupt");
    let mirror = serve(HashMap::from([("resnet32-d509ac18.th".to_string(), b"not the weights".to_vec())]));
    let predict = ["predict", "--weights", "cifar:resnet32", "missing.png"];
    let out = resnet_with(&mirror, &home, &predict);
    assert_error(&out, &["resnet32-d509ac18.th", "does not start with d509ac18", "not kept"]);
    let cache = home.join("hub/checkpoints");
    let left: Vec<_> = std::fs::read_dir(&cache).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "a corrupt download left {left:?}");

    // Not on the mirror, and offline: one line saying what to fetch and where to put it.
    for url in [mirror.clone(), dead_url()] {
        let out = resnet_with(&url, &home, &["eval", "--weights", "torchvision:resnet18", "--data", "x"]);
        assert_error(&out, &["torchvision:resnet18: cannot fetch", "resnet18-f37072fd.pth", "put it at", p(&cache)]);
    }
    // A name that is not published.
    let out = resnet_with(&mirror, &home, &["eval", "--weights", "torchvision:resnet9", "--data", "x"]);
    assert_error(&out, &["unknown published weights 'torchvision:resnet9'", "torchvision:resnet50.v2"]);
}

#[test]
fn weights_list_names_every_published_model() {
    let home = common::temp_dir("registry_list");
    let out = resnet_with(&dead_url(), &home, &["weights", "list"]);
    let text = common::cli::ok(&out);
    for line in ["torchvision:resnet50.v2    resnet50   imagenet     232/224   80.86   95.43  no", "cifar:resnet56"] {
        assert!(text.contains(line), "{line} not in:\n{text}");
    }
    assert_eq!(text.lines().filter(|l| l.starts_with("torchvision:") || l.starts_with("cifar:")).count(), 14);
}
