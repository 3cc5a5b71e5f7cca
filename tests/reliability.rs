//! Nothing lost, nothing unbounded: run directories are owned and locked, checkpoints
//! survive damage, every reader has a budget, output from files is escaped, temporary
//! files never collide. One test per failure a hostile but realistic user found.

mod common;

use common::cli::{assert_error, ok, p, resnet};
use common::{temp_dir, write_cifar_file};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// Tiny CIFAR-10 train and test files (40 and 20 records).
fn tiny_data(dir: &Path) -> (PathBuf, PathBuf) {
    let (train, test) = (dir.join("train.bin"), dir.join("test.bin"));
    write_cifar_file(&train, 40, 1);
    write_cifar_file(&test, 20, 2);
    (train, test)
}

fn train_args<'a>(train: &'a Path, test: &'a Path, out: &'a Path, model: &'a str, epochs: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--model",
        model,
        "--data",
        p(train),
        "--test-data",
        p(test),
        "--epochs",
        epochs,
        "--batch",
        "10",
        "--out",
        p(out),
        "--quiet",
    ]
}

/// The binary with `args`, its address space limited to `limit` bytes (as `prlimit --as`),
/// its output captured.
fn limited(args: &[&str], limit: u64) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_resnet"));
    command.args(args).env("MALLOC_ARENA_MAX", "2").stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: only setrlimit, which is async-signal-safe, runs between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let rlim = libc::rlimit { rlim_cur: limit, rlim_max: limit };
            if libc::setrlimit(libc::RLIMIT_AS, &rlim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

fn resnet_limited(args: &[&str], limit: u64) -> Output {
    limited(args, limit).output().expect("run resnet")
}

/// Waits for `child` at most `secs` seconds; kills it and fails the test if it is still running.
fn wait_at_most(mut child: std::process::Child, secs: u64, what: &str) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(secs) {
            child.kill().unwrap();
            panic!("{what}: still running after {secs} s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

// 1. A finished run is never replaced silently; --overwrite says what it replaces.
#[test]
fn a_run_directory_is_not_overwritten_without_being_told() {
    let dir = temp_dir("reliability_owned");
    let (train, test) = tiny_data(&dir);
    let run = dir.join("run");
    ok(&resnet(&train_args(&train, &test, &run, "resnet8", "1")));
    let weights = std::fs::read(run.join("model.safetensors")).unwrap();
    let checkpoint = std::fs::read(run.join("checkpoint.safetensors")).unwrap();
    let unchanged = |name: &str, before: &[u8]| std::fs::read(run.join(name)).unwrap() == before;

    let again = resnet(&train_args(&train, &test, &run, "resnet14", "1"));
    assert_error(&again, &["already holds a run", "model.safetensors", "--resume", "--overwrite"]);
    assert!(unchanged("model.safetensors", &weights), "weights were touched");
    assert!(unchanged("checkpoint.safetensors", &checkpoint), "checkpoint was touched");

    // With --overwrite, the old run's files go, the old model's weights included.
    let mut args = train_args(&train, &test, &run, "resnet14", "1");
    args.push("--overwrite");
    let replaced = resnet(&args);
    ok(&replaced);
    let stderr = String::from_utf8_lossy(&replaced.stderr);
    assert!(stderr.contains("--overwrite: replacing the run in") && stderr.contains("model.safetensors"), "{stderr}");
    let config = std::fs::read_to_string(run.join("config.json")).unwrap();
    assert!(config.contains("\"resnet14\""), "{config}");
    let file = resnet::weights::StateDict::read(&run.join("model.safetensors")).unwrap();
    assert_eq!(file.metadata["model"], "resnet14");

    // --overwrite and --resume contradict each other.
    let mut args = train_args(&train, &test, &run, "resnet14", "1");
    args.extend(["--overwrite", "--resume"]);
    let both = resnet(&args);
    assert!(!both.status.success());
}

// 2. A second process on a run directory in use fails at once, naming the first; the lock
// of a process that died is taken over.
#[test]
fn a_second_process_on_a_run_in_use_is_refused() {
    let dir = temp_dir("reliability_lock");
    let (train, test) = tiny_data(&dir);
    let run = dir.join("run");
    let mut args = train_args(&train, &test, &run, "resnet8", "1000");
    args.extend(["--checkpoint-every", "2"]);
    let first = Command::new(env!("CARGO_BIN_EXE_resnet")).args(&args).stderr(Stdio::null()).spawn().unwrap();
    let pid = first.id();
    let lock = run.join(".lock");
    let start = Instant::now();
    while !std::fs::read_to_string(&lock).is_ok_and(|s| s.contains(&format!("pid {pid},"))) {
        assert!(start.elapsed() < Duration::from_secs(30), "the first run never took its lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A fresh run, a resume and an overwrite are all refused while it trains.
    for extra in [&[][..], &["--resume"][..], &["--overwrite"][..]] {
        let mut second = train_args(&train, &test, &run, "resnet8", "1000");
        second.extend(extra);
        let out = resnet(&second);
        assert_error(&out, &[&format!("another process (pid {pid}, started at "), "is training in this run directory"]);
    }
    // Killed without a chance to clean up: its lock is taken over by the next run.
    while !run.join("checkpoint.safetensors").exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "no checkpoint written");
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let first = first.wait_with_output().unwrap();
    assert!(!first.status.success());
    let child = Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(["train", "--resume", "--out", p(&run), "--quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It trains on (far from done): the lock is its own now. Stop it there.
    let start = Instant::now();
    let own = loop {
        let text = std::fs::read_to_string(&lock).unwrap_or_default();
        if text.contains(&format!("pid {},", child.id())) {
            break true;
        }
        if start.elapsed() > Duration::from_secs(30) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let out = child.wait_with_output().unwrap();
    assert!(own, "the resumed run did not take the lock over: {}", String::from_utf8_lossy(&out.stderr));
}

// 3. A damaged last checkpoint: --resume falls back to the one before, says so, and ends
// with the weights of an undisturbed run.
#[test]
fn a_damaged_checkpoint_falls_back_to_the_previous_one() {
    let dir = temp_dir("reliability_fallback");
    let (train, test) = tiny_data(&dir);
    let run = dir.join("run");
    ok(&resnet(&train_args(&train, &test, &run, "resnet8", "3")));
    let tensors = |path: &Path| resnet::weights::StateDict::read(path).unwrap().tensors;
    let undisturbed = tensors(&run.join("model.safetensors"));
    let ckpt = run.join("checkpoint.safetensors");
    let previous = run.join("checkpoint.prev.safetensors");
    let state = |path: &Path| resnet::train::checkpoint::Checkpoint::read(path).unwrap().state.iteration;
    assert_eq!((state(&previous), state(&ckpt)), (8, 12), "the previous checkpoint is the epoch before");

    let bytes = std::fs::read(&ckpt).unwrap();
    std::fs::write(&ckpt, &bytes[..bytes.len() / 3]).unwrap();
    std::fs::remove_file(run.join("model.safetensors")).unwrap();
    let resumed = resnet(&["train", "--resume", "--out", p(&run), "--quiet"]);
    ok(&resumed);
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(stderr.contains("checkpoint.safetensors") && stderr.contains("not a valid safetensors file"), "{stderr}");
    assert!(stderr.contains("resuming from the previous checkpoint") && stderr.contains("(iteration 8)"), "{stderr}");
    assert!(tensors(&run.join("model.safetensors")) == undisturbed, "not the undisturbed weights");
    assert_eq!(state(&ckpt), 12, "the run ends with a readable last checkpoint");

    // Both damaged: one error naming both, nothing trained.
    for file in [&ckpt, &previous] {
        std::fs::write(file, b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ").unwrap();
    }
    assert_error(
        &resnet(&["train", "--resume", "--out", p(&run), "--quiet"]),
        &["checkpoint.safetensors", "the previous checkpoint is unreadable too"],
    );
}

/// A zip archive of `entries` (name, bytes of zeros or given), deflated, written to `path`.
fn zip_file(path: &Path, entries: &[(&str, Result<&[u8], u64>)]) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let deflated = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .compression_level(Some(1))
        .large_file(true);
    let zeros = vec![0u8; MIB as usize];
    for (name, data) in entries {
        zip.start_file(*name, deflated).unwrap();
        match data {
            Ok(bytes) => zip.write_all(bytes).unwrap(),
            Err(count) => (0..count / MIB).for_each(|_| zip.write_all(&zeros).unwrap()),
        }
    }
    zip.finish().unwrap();
}

// 4. Zip bombs end with a clear error within 1 GiB of address space, and write nothing.
#[test]
fn zip_bombs_are_refused_before_allocating() {
    let dir = temp_dir("reliability_bombs");
    // data.pkl that inflates to 1 GiB.
    let pickle_bomb = dir.join("pickle_bomb.pth");
    zip_file(&pickle_bomb, &[("archive/data.pkl", Err(1 << 30))]);
    // A valid state dict whose one storage declares 2^28 floats (1 GiB), deflated zeros.
    let storage_bomb = dir.join("storage_bomb.pth");
    let numel: u32 = 1 << 28;
    let mut pickle = b"\x80\x02}X\x01\x00\x00\x00tctorch._utils\n_rebuild_tensor_v2\n(".to_vec();
    pickle.extend(b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpu");
    pickle.push(b'J');
    pickle.extend((numel as i32).to_le_bytes());
    pickle.extend(b"tQK\x00(J");
    pickle.extend((numel as i32).to_le_bytes());
    pickle.extend(b"tK\x01\x85\x89ccollections\nOrderedDict\n)RtRs.");
    zip_file(&storage_bomb, &[("archive/data.pkl", Ok(&pickle)), ("archive/data/0", Err(4 << 28))]);
    assert!(std::fs::metadata(&storage_bomb).unwrap().len() < 8 * MIB);

    for (bomb, needle) in [(&pickle_bomb, "data.pkl"), (&storage_bomb, "data/0")] {
        let out_file = dir.join("out.safetensors");
        let out = resnet_limited(&["convert", p(bomb), p(&out_file)], 1 << 30);
        assert_error(&out, &[p(bomb), needle]);
        assert!(!out_file.exists(), "a bomb wrote {}", out_file.display());
    }
    let refused = resnet::weights::read_torch_bytes(&std::fs::read(&storage_bomb).unwrap(), "bomb.pth");
    assert!(format!("{:#}", refused.unwrap_err()).contains("refused as a likely zip bomb"));
}

// 5. Devices and FIFOs are not data: refused at once, within 1 GiB, naming the file.
#[test]
fn devices_and_fifos_are_refused_as_data() {
    let dir = temp_dir("reliability_devices");
    let fifo = dir.join("fifo.bin");
    let c_path = std::ffi::CString::new(p(&fifo)).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
    let (train, test) = tiny_data(&dir);
    let weights = dir.join("run");
    ok(&resnet(&train_args(&train, &test, &weights, "resnet8", "1")));
    let model = weights.join("model.safetensors");
    let fresh = dir.join("r");
    for data in ["/dev/zero", p(&fifo)] {
        let cases: [Vec<&str>; 4] = [
            vec!["train", "--model", "resnet8", "--data", data, "--test-data", p(&test), "--out", p(&fresh)],
            vec!["eval", "--model", "resnet8", "--weights", p(&model), "--data", data],
            vec!["predict", "--model", "resnet8", "--weights", p(&model), data],
            vec!["eval", "--model", "resnet8", "--weights", data, "--data", p(&test)],
        ];
        for args in cases {
            let command = limited(&args, 1 << 30).spawn().unwrap();
            let out = wait_at_most(command, 20, &args.join(" "));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?} succeeded");
            assert!(!stderr.contains("panicked"), "{stderr}");
            assert!(stderr.contains(data) && stderr.contains("not a regular file"), "{args:?}: {stderr}");
        }
    }
    // /dev/null is a device too, not a directory missing test_batch.bin.
    let out = resnet(&["eval", "--model", "resnet8", "--weights", p(&model), "--data", "/dev/null"]);
    assert_error(&out, &["/dev/null", "not a regular file"]);
    // An official name must hold the official size: refused from its size, not read.
    let big = dir.join("data_batch_1.bin");
    std::fs::File::create(&big).unwrap().set_len(40 * MIB).unwrap();
    let out = resnet_limited(&["eval", "--model", "resnet8", "--weights", p(&model), "--data", p(&big)], 1 << 30);
    assert_error(&out, &["data_batch_1.bin", "is larger than any CIFAR-10 batch file"]);
}

// 6. Sizes and counts out of all proportion are flag errors naming the limit, not aborts.
#[test]
fn absurd_sizes_and_thread_counts_are_flag_errors() {
    let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/imagenet/resnet18.pth");
    let image = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/imagenet/input.png");
    let predict = |extra: &[&str]| {
        let mut args = vec!["predict", "--model", "resnet18", "--weights", p(&weights), p(&image)];
        args.extend(extra);
        resnet(&args)
    };
    for (flag, value, needle) in [
        ("--crop", "100000", "must be at most 4096"),
        ("--resize", "100000", "must be at most 4096"),
        ("--batch", "1000000000", "must be at most 8192"),
        ("--threads", "100000", "must be at most 1024"),
        ("--threads", "0", "must be at least 1"),
        ("--crop", "big", "is not a whole number"),
    ] {
        let out = predict(&[flag, value]);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {}", String::from_utf8_lossy(&out.stderr));
        assert_error(&out, &[flag, needle]);
    }
    let out = resnet(&["train", "--model", "resnet18", "--data", "/nonexistent", "--crop", "100000"]);
    assert_error(&out, &["--crop", "must be at most 4096"]);
    let out = resnet(&["eval", "--model", "resnet18", "--weights", "x", "--data", "y", "--scales", "224,99999"]);
    assert_error(&out, &["--scales", "must be at most 4096"]);
}

/// `model.safetensors` of a run, with metadata entry `key` set to `value`, written to `to`.
fn with_metadata(from: &Path, to: &Path, key: &str, value: &str) {
    let bytes = std::fs::read(from).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut metadata = meta.metadata().clone().unwrap();
    metadata.insert(key.to_string(), value.to_string());
    let tensors: Vec<(String, safetensors::tensor::TensorView)> =
        st.names().into_iter().map(|n| (n.to_string(), st.tensor(n).unwrap())).collect();
    std::fs::write(to, safetensors::serialize(tensors, Some(metadata)).unwrap()).unwrap();
}

// 7. Text from a weights file cannot drive the terminal; metadata is checked the same way
// by every command.
#[test]
fn class_names_from_files_are_escaped_and_metadata_is_checked() {
    let dir = temp_dir("reliability_escapes");
    let (train, test) = tiny_data(&dir);
    let run = dir.join("run");
    ok(&resnet(&train_args(&train, &test, &run, "resnet8", "1")));
    let hostile = dir.join("hostile.safetensors");
    let names: Vec<String> = (0..10).map(|i| format!("\u{1b}]0;owned\u{7}\u{1b}[2Kclass{i}")).collect();
    with_metadata(&run.join("model.safetensors"), &hostile, "class_names", &serde_json::to_string(&names).unwrap());
    let image = dir.join("cat.png");
    image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([x as u8 * 8, y as u8 * 8, 128])).save(&image).unwrap();
    let out = resnet(&[
        "predict",
        "--model",
        "resnet8",
        "--weights",
        p(&hostile),
        "--resize",
        "32",
        "--crop",
        "32",
        p(&image),
    ]);
    let stdout = ok(&out);
    assert!(!stdout.contains('\u{1b}') && !stdout.contains('\u{7}'), "{stdout:?}");
    assert!(stdout.contains("\\u{1b}]0;owned\\u{7}\\u{1b}[2Kclass"), "{stdout}");
    let out = resnet(&["eval", "--model", "resnet8", "--weights", p(&hostile), "--data", p(&test)]);
    let stdout = ok(&out);
    assert!(!stdout.contains('\u{1b}') && stdout.contains("\\u{1b}"), "{stdout:?}");

    // A 2-value per-pixel mean is refused by predict as by eval.
    let bad_norm = dir.join("bad_norm.safetensors");
    with_metadata(&run.join("model.safetensors"), &bad_norm, "norm", r#"{"PixelMean":[0.5,0.5]}"#);
    let predict =
        ["predict", "--model", "resnet8", "--weights", p(&bad_norm), "--resize", "32", "--crop", "32", p(&image)];
    assert_error(&resnet(&predict), &["bad_norm.safetensors", "corrupt 'norm' metadata", "not a square RGB image"]);
    let eval = ["eval", "--model", "resnet8", "--weights", p(&bad_norm), "--data", p(&test)];
    assert_error(&resnet(&eval), &["bad_norm.safetensors", "corrupt 'norm' metadata"]);
}

// 8. Temporary files have names of their own and do not outlive a failed write.
#[test]
fn temporary_files_never_touch_a_users_files() {
    let dir = temp_dir("reliability_tmp");
    let input = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pth/legacy.pth");
    let users = dir.join("keep.tmp");
    std::fs::write(&users, b"the user's notes").unwrap();
    let target = dir.join("keep.safetensors");
    ok(&resnet(&["convert", p(&input), p(&target)]));
    assert_eq!(std::fs::read(&users).unwrap(), b"the user's notes");
    // The output exists now: converting again asks for --overwrite.
    assert_error(&resnet(&["convert", p(&input), p(&target)]), &["keep.safetensors", "--overwrite"]);
    ok(&resnet(&["convert", p(&input), p(&target), "--overwrite"]));

    // A write that fails at the rename (the target is a directory) leaves no temporary file.
    let blocked = dir.join("blocked.safetensors");
    std::fs::create_dir(&blocked).unwrap();
    let err = resnet::files::write_atomic(&blocked, b"data").unwrap_err();
    assert!(format!("{err:#}").contains("blocked.safetensors"), "{err:#}");
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(!left.iter().any(|n| n.to_string_lossy().ends_with(".tmp") && n != "keep.tmp"), "{left:?}");
    // Two temporary files for one target never share a name.
    let a = resnet::files::TempFile::beside(&target).unwrap();
    let b = resnet::files::TempFile::beside(&target).unwrap();
    assert_ne!(a.path(), b.path());
    let (pa, pb) = (a.path().to_path_buf(), b.path().to_path_buf());
    drop((a, b));
    assert!(!pa.exists() && !pb.exists(), "dropped temporary files remain");
}

/// A safetensors file with one f32 tensor [1.5, -2.0] and a header of exactly `len` bytes
/// (JSON padded with spaces, as any writer may).
fn safetensors_with_header_len(len: usize) -> Vec<u8> {
    let json = r#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    assert!(len >= json.len());
    let mut bytes = (len as u64).to_le_bytes().to_vec();
    bytes.extend(json.as_bytes());
    bytes.resize(8 + len, b' ');
    bytes.extend(1.5f32.to_le_bytes());
    bytes.extend((-2.0f32).to_le_bytes());
    bytes
}

/// A safetensors file cut short, in its header or in its data, is called truncated, with
/// how much of it there is, not "not a weights file" or a parser's message.
#[test]
fn a_truncated_safetensors_file_is_called_truncated() {
    let whole = safetensors_with_header_len(300);
    for cut in [20, 200, 8 + 300 + 4] {
        let err = resnet::weights::StateDict::from_bytes(&whole[..cut], Path::new("w.safetensors")).err().unwrap();
        let want = match cut {
            312 => "w.safetensors: not a valid safetensors file (truncated: it ends after 312 of its 316 bytes)".into(),
            _ => format!("(truncated: it ends after {cut} bytes, within its 308-byte header)"),
        };
        assert!(format!("{err:#}").contains(&want), "cut at {cut}: {err:#}");
    }
}

// 9. Formats are told apart by their whole signature: a safetensors header length may
// begin with any byte, 0x80 (a pickle's PROTO) included.
#[test]
fn safetensors_with_every_header_length_residue_load() {
    for residue in 0..256 {
        for len in [256 + residue, 0x0280, 0x0380, 0x0480, 0x0580] {
            let bytes = safetensors_with_header_len(len);
            let file = resnet::weights::StateDict::from_bytes(&bytes, Path::new("w.safetensors"))
                .unwrap_or_else(|e| panic!("header length {len}: {e:#}"));
            assert_eq!(file.tensors[0].1.values, [1.5, -2.0], "header length {len}");
        }
    }
    // And the other formats are still recognized.
    let legacy = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pth/legacy.pth");
    assert!(resnet::weights::StateDict::read(&legacy).is_ok());
    let err = resnet::weights::StateDict::from_bytes(b"\x80\x09junk", Path::new("x.bin")).err().unwrap();
    assert!(format!("{err:#}").contains("x.bin: not a weights file"), "{err:#}");
}

// 10. Messages name the path and the real problem.
#[test]
fn messages_name_the_path_and_the_problem() {
    let dir = temp_dir("reliability_messages");
    let (train, test) = tiny_data(&dir);
    // An --out that cannot be created: the message names it, not only the OS error.
    let blocker = dir.join("a_file");
    std::fs::write(&blocker, b"").unwrap();
    let out = resnet(&train_args(&train, &test, &blocker.join("run"), "resnet8", "1"));
    assert_error(&out, &[p(&blocker.join("run")), "cannot create the run directory"]);
    let out = resnet(&train_args(&train, &test, &blocker, "resnet8", "1"));
    assert_error(&out, &[p(&blocker), "not a directory"]);
    // A non-UTF-8 --out.
    use std::os::unix::ffi::OsStrExt;
    let odd = std::ffi::OsStr::from_bytes(b"run-\xff");
    let out = Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(["train", "--model", "resnet8", "--data", p(&train), "--test-data", p(&test), "--out"])
        .arg(dir.join(odd))
        .output()
        .unwrap();
    assert_error(&out, &["--out", "not valid UTF-8"]);
    // --resume without a checkpoint: the error alone, no notes about ignored flags first.
    let empty = dir.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = resnet(&["train", "--resume", "--out", p(&empty), "--lr", "0.5", "--quiet"]);
    assert_error(&out, &["empty", "no checkpoint to resume from"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("note:"), "{}", String::from_utf8_lossy(&out.stderr));
}
