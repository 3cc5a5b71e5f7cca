//! Decoding against Pillow 13 (libjpeg-turbo 3.2): `ImageOps.exif_transpose(Image.open(f)).convert("RGB")`,
//! recorded in tests/fixtures/images/expected by tools/make_image_fixtures.py.

mod common;

use common::images::{fixture, manifest};
use resnet::data::image::{decode_bytes, decode_file};

/// The largest per-sample difference allowed between zune-jpeg's and libjpeg-turbo's decoding of the fixtures.
/// Their IDCTs round differently (±1), and zune-jpeg upsamples subsampled chroma in two separately rounded steps
/// where libjpeg-turbo rounds once, which reaches 3 on the noisy 4:2:0 and 4:2:2 fixtures (real photos: see
/// NOTES.md).
const JPEG_TOLERANCE: u8 = 3;

#[test]
fn decodes_like_pillow() {
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for line in manifest("decode.txt") {
        let name = &line[0];
        let size: (usize, usize) = (line[1].parse().unwrap(), line[2].parse().unwrap());
        let expected = std::fs::read(fixture(&format!("expected/{name}.rgb"))).unwrap();
        let img = match decode_file(&fixture(name)) {
            Ok(img) => img,
            Err(e) => {
                failures.push(format!("{e}"));
                continue;
            }
        };
        if (img.width, img.height) != size {
            failures.push(format!("{name}: {}x{}, Pillow {}x{}", img.width, img.height, size.0, size.1));
            continue;
        }
        let diffs = img.data.iter().zip(&expected).map(|(a, b)| a.abs_diff(*b));
        let max = diffs.clone().max().unwrap_or(0);
        let mean = diffs.map(f64::from).sum::<f64>() / expected.len() as f64;
        report.push(format!("{name:>16}  max {max}  mean {mean:.3}"));
        // PNG is lossless, so it must be exact; JPEG decoders may differ slightly.
        let tolerance = if name.ends_with(".png") { 0 } else { JPEG_TOLERANCE };
        if max > tolerance {
            failures.push(format!("{name}: max difference {max} > {tolerance}"));
        }
    }
    println!("difference from Pillow per file:\n{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn bad_files_give_one_line_errors() {
    let cases = [
        ("empty.jpg", "empty file"),
        ("html.jpg", "not a JPEG or PNG image (starts with bytes 3c 68 74 6d)"),
        ("truncated.jpg", "truncated JPEG: no end-of-image marker after the image data"),
        ("no_eoi.jpg", "truncated JPEG: no end-of-image marker after the image data"),
        ("truncated.png", "truncated PNG: "),
        ("corrupt.png", "corrupt PNG: "),
        ("zero_components.jpg", "corrupt JPEG: "),
        ("bomb.png", "image too large: 65535x65535 is 4294836225 pixels, more than 178956970"),
        ("bomb.jpg", "image too large: 65535x65535 is 4294836225 pixels, more than 178956970"),
    ];
    for (name, reason) in cases {
        let path = fixture(&format!("bad/{name}"));
        let err = decode_file(&path).expect_err(name).to_string();
        println!("{err}");
        assert!(err.starts_with(&format!("{}: {reason}", path.display())), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
    let err = decode_file(&fixture("bad/missing.jpg")).unwrap_err().to_string();
    assert!(err.ends_with("missing.jpg: No such file or directory (os error 2)"), "{err}");
    let err = decode_bytes(b"GIF89a\x01\x00", "cat.gif").unwrap_err().to_string();
    assert_eq!(err, "cat.gif: not a JPEG or PNG image (looks like GIF, starts with bytes 47 49 46 38)");
}

/// Every fixture cut short at many lengths, and with single bytes garbled at many places, must decode or fail
/// with a one-line error, never panic.
#[test]
fn damaged_files_never_panic() {
    let mut names: Vec<String> = manifest("decode.txt").into_iter().map(|l| l[0].clone()).collect();
    names.retain(|n| !n.starts_with("exif") || n == "exif6.jpg");
    let (mut decoded, mut refused) = (0, 0);
    for name in names {
        let good = std::fs::read(fixture(&name)).unwrap();
        let step = (good.len() / 150).max(1);
        let mut variants: Vec<Vec<u8>> = (0..good.len()).step_by(step).map(|n| good[..n].to_vec()).collect();
        for at in (0..good.len()).step_by(step) {
            for flip in [0xFF, 0x01, 0x80] {
                let mut bad = good.clone();
                bad[at] ^= flip;
                variants.push(bad);
            }
        }
        for bytes in variants {
            match decode_bytes(&bytes, &name) {
                Ok(img) => {
                    assert_eq!(img.data.len(), img.width * img.height * 3);
                    decoded += 1;
                }
                Err(e) => {
                    let e = e.to_string();
                    assert!(e.starts_with(&format!("{name}: ")) && !e.contains('\n'), "{e}");
                    refused += 1;
                }
            }
        }
    }
    println!("damaged variants: {decoded} still decoded, {refused} refused");
}
