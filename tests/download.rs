//! `resnet download` against a local HTTP server that serves an archive made here:
//! progress, md5 verification, unpacking, and rejection of a corrupt download.

mod common;

use md5::{Digest, Md5};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;

/// A CIFAR-10-shaped archive (tiny batch files with the official names).
fn make_archive() -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let names = [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ];
    for name in names {
        let body = vec![3u8; 3073 * 4];
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, format!("cifar-10-batches-bin/{name}"), body.as_slice()).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

/// Serves `body` to every request on a background thread; returns the base URL.
fn serve(body: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut s = stream.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/gzip\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        }
    });
    format!("http://{addr}")
}

#[test]
fn download_verifies_and_unpacks() {
    let archive = make_archive();
    let md5: String = Md5::digest(&archive).iter().map(|b| format!("{b:02x}")).collect();
    let url = format!("{}/cifar-10-binary.tar.gz", serve(archive));
    let dir = common::temp_dir("download_ok");
    let out = Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(["download", "cifar10", "--url", &url, "--md5", &md5, "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for f in ["data_batch_1.bin", "data_batch_5.bin", "test_batch.bin"] {
        assert_eq!(std::fs::metadata(dir.join("cifar-10-batches-bin").join(f)).unwrap().len(), 3073 * 4);
    }
    assert!(resnet::data::cifar::is_present(&dir, resnet::data::DatasetKind::Cifar10));

    // A wrong checksum (here: the official one) is refused and nothing is unpacked.
    let bad_dir = common::temp_dir("download_bad");
    let out = Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(["download", "cifar10", "--url", &url, "--dir"])
        .arg(&bad_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("md5 mismatch"), "{err}");
    assert!(err.contains("c32a1d4ab5d03f1284b67883e8d87530"), "the official md5 is the default: {err}");
    assert!(!bad_dir.join("cifar-10-batches-bin").exists());
}

#[test]
fn an_archive_on_disk_is_checked_and_unpacked_and_a_failed_download_says_how() {
    let archive = make_archive();
    let md5: String = Md5::digest(&archive).iter().map(|b| format!("{b:02x}")).collect();
    let dir = common::temp_dir("download_from");
    let file = dir.join("cifar-10-binary.tar.gz");
    std::fs::write(&file, &archive).unwrap();
    let data = dir.join("data");
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_resnet"))
            .args(["download", "cifar10", "--dir"])
            .arg(&data)
            .args(extra)
            .output()
            .unwrap()
    };
    // The official md5 is the default: this made archive is refused, nothing unpacked.
    let out = run(&["--from", file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("md5 mismatch") && err.contains("cifar-10-binary.tar.gz"), "{err}");
    assert!(!data.join("cifar-10-batches-bin").exists());
    let out = run(&["--from", file.to_str().unwrap(), "--md5", &md5]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(resnet::data::cifar::is_present(&data, resnet::data::DatasetKind::Cifar10));
    assert!(file.exists(), "the user's archive stays");

    // Nothing listens on port 9 of this machine: the error says how to go on offline.
    let out = run(&["--url", "http://127.0.0.1:9/cifar-10-binary.tar.gz"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("resnet download cifar10 --from FILE"), "{err}");
}
