//! The paper's experiments as commands: reports, figures, skipping finished runs,
//! resuming interrupted ones, `resnet plot` and `resnet responses`, on data made here.

mod common;

use common::cli::{assert_error, ok, p, resnet};
use resnet::experiment::runner::{self, Finished, Options};
use resnet::train::recipe::Length;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;

/// A CIFAR-10 directory in the official layout (10,000 records per file, as the official
/// names require), written once for all the tests here; and an empty output directory.
fn tiny_cifar(name: &str) -> (PathBuf, PathBuf) {
    static DATA: OnceLock<PathBuf> = OnceLock::new();
    let data = DATA.get_or_init(|| {
        let dir = common::temp_dir("experiments_cifar10");
        common::write_cifar_dir(&dir, 10000);
        dir
    });
    (data.clone(), common::temp_dir(name).join("out"))
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_figure(path: &Path, width: u32, height: u32) {
    let svg = std::fs::read_to_string(path.with_extension("svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("</svg>") && svg.len() > 2000, "{}", path.display());
    let png = image::open(path.with_extension("png")).unwrap().to_rgb8();
    assert_eq!(png.dimensions(), (width, height), "{}", path.display());
    // Something was drawn: not a blank page.
    assert!(png.pixels().filter(|p| p.0 != [255, 255, 255]).count() > 1000);
}

#[test]
fn a_cifar_experiment_reports_draws_and_skips_finished_runs() {
    let (data, out) = tiny_cifar("experiment_cifar");
    let args = ["experiment", "fig7", "--data", p(&data), "--out", p(&out), "--iterations", "3"];
    let run = |extra: &[&str]| resnet(&[&args[..], &["--runs", "plain20,resnet20", "--quiet"], extra].concat());
    let first = run(&[]);
    ok(&first);
    let report = std::fs::read_to_string(out.join("fig7/report.md")).unwrap();
    for needle in ["Fig. 7", "3 of 64,000 iterations", "plain-20", "ResNet-20", "fig7.png", "responds less than"] {
        assert!(report.contains(needle), "report lacks '{needle}':\n{report}");
    }
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("fig7/results.json")).unwrap()).unwrap();
    let runs = results["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    // The stem and 18 block layers of a 20-layer net, each a positive std.
    let layers = runs[1]["responses"].as_array().unwrap();
    assert_eq!(layers.len(), 19);
    assert_eq!(layers[0]["layer"], "conv1");
    assert_eq!(layers[18]["layer"], "layer3.2.conv2");
    assert!(layers.iter().all(|l| l["std"].as_f64().unwrap() > 0.0));
    assert_figure(&out.join("fig7/fig7"), 760, 700);

    // Again: both runs are finished, nothing is trained, and the report is written anew.
    let metrics = std::fs::read(out.join("resnet20/metrics.jsonl")).unwrap();
    let again = run(&[]);
    ok(&again);
    assert_eq!(stderr(&again).matches("finished before, skipped").count(), 2, "{}", stderr(&again));
    assert_eq!(std::fs::read(out.join("resnet20/metrics.jsonl")).unwrap(), metrics);

    // Fig. 6 shares the runs: its curves are drawn from them, one panel per kind of net.
    let fig6 = resnet(&[
        "experiment",
        "fig6",
        "--data",
        p(&data),
        "--out",
        p(&out),
        "--iterations",
        "3",
        "--runs",
        "plain20,resnet20",
        "--quiet",
    ]);
    ok(&fig6);
    assert_figure(&out.join("fig6/fig6"), 2 * 560, 420);
    assert!(std::fs::read_to_string(out.join("fig6/report.md")).unwrap().contains("| ResNet-20 |"));

    // Another length for finished runs would mix scales in one table: refused.
    let longer = ["experiment", "fig7", "--data", p(&data), "--out", p(&out), "--iterations", "5", "--runs", "plain20"];
    assert_error(&resnet(&longer), &["started for 3 iterations, not 5"]);
}

#[test]
fn an_interrupted_experiment_resumes_where_it_stopped() {
    let (data, out) = tiny_cifar("experiment_resume");
    let exp = resnet::experiment::find("fig1").unwrap();
    let options = |out: &Path, cancel| Options {
        data: data.clone(),
        out: out.to_path_buf(),
        length: Some(Length::Iterations(4)),
        seeds: 1,
        runs: vec!["plain20".into()],
        progress: false,
        cancel,
    };
    // Cancelled from the start: the first step is taken and checkpointed.
    let stop = AtomicBool::new(true);
    assert!(matches!(runner::run(exp, &options(&out, &stop)).unwrap(), Finished::Interrupted));
    let saved = resnet::train::checkpoint::Checkpoint::latest(&out.join("plain20")).unwrap();
    assert_eq!(saved.state.iteration, 1);
    let go = AtomicBool::new(false);
    let Finished::All(resumed) = runner::run(exp, &options(&out, &go)).unwrap() else { panic!("finished") };
    // The same run without the interruption ends with the same network.
    let straight = out.parent().unwrap().join("straight");
    let Finished::All(whole) = runner::run(exp, &options(&straight, &go)).unwrap() else { panic!("finished") };
    assert_eq!(resumed[0].iterations, 4);
    assert_eq!(resumed[0].test_error, whole[0].test_error);
    let weights = |dir: &Path| {
        let file = resnet::weights::StateDict::read(&dir.join("plain20/model.safetensors")).unwrap();
        file.tensors.iter().map(|(k, t)| (k.clone(), t.values.clone())).collect::<Vec<_>>()
    };
    assert_eq!(weights(&out), weights(&straight));
}

#[test]
fn plot_draws_runs_and_refuses_a_directory_without_metrics() {
    let (data, out) = tiny_cifar("plot");
    let run = out.join("resnet20");
    ok(&resnet(&[
        "train",
        "--model",
        "resnet20",
        "--data",
        p(&data),
        "--out",
        p(&run),
        "--iterations",
        "2",
        "--log-every",
        "1",
        "--quiet",
    ]));
    let figure = out.join("curves.png");
    ok(&resnet(&["plot", p(&run), "--out", p(&figure), "--title", "ResNet-20"]));
    assert_figure(&figure, 560, 420);
    assert_error(&resnet(&["plot", p(&run), "--out", p(&figure)]), &["curves.svg", "already exists", "--overwrite"]);
    let empty = out.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert_error(&resnet(&["plot", p(&empty), "--out", p(&out.join("x.svg"))]), &["empty", "no metrics.jsonl"]);
    assert_error(&resnet(&["plot", p(&run), "--out", p(&out.join("x.pdf"))]), &["x.pdf", ".svg or .png"]);
}

#[test]
fn imagenet_experiments_run_end_to_end_on_a_tiny_folder() {
    let dir = common::temp_dir("experiment_imagenet");
    let data = dir.join("data");
    common::images::synthetic_folder(&data.join("train"), 2, 3, 40, 32, 1);
    common::images::synthetic_folder(&data.join("val"), 2, 1, 40, 32, 2);
    let out = dir.join("out");
    let args = ["experiment", "table2", "--data", p(&data), "--out", p(&out), "--iterations", "1", "--quiet"];
    ok(&resnet(&[&args[..], &["--runs", "plain18,resnet18-A"]].concat()));
    let report = std::fs::read_to_string(out.join("fig4/report.md")).unwrap();
    for needle in ["Table 2", "10-crop", "| ResNet-18 A |", "27.88", "fig4.png"] {
        assert!(report.contains(needle), "report lacks '{needle}':\n{report}");
    }
    assert_figure(&out.join("fig4/fig4"), 2 * 560, 420);
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("fig4/results.json")).unwrap()).unwrap();
    assert!(results["runs"][0]["test_error5"].is_number());
    // Table 3 trains option B and C nets on the same folder.
    ok(&resnet(&[
        "experiment",
        "table3",
        "--data",
        p(&data),
        "--out",
        p(&out),
        "--iterations",
        "1",
        "--quiet",
        "--runs",
        "resnet34-B",
    ]));
    assert!(std::fs::read_to_string(out.join("table3/report.md")).unwrap().contains("24.52 / 7.46"));
}

#[test]
fn experiment_names_and_data_are_checked() {
    assert_error(&resnet(&["experiment", "fig9"]), &["unknown experiment 'fig9'", "fig6"]);
    let dir = common::temp_dir("experiment_bad_data");
    assert_error(&resnet(&["experiment", "fig1", "--data", p(&dir)]), &["no CIFAR-10 batches"]);
    let list = ok(&resnet(&["experiment", "list"]));
    for needle in ["fig1", "fig6", "table6", "fig7", "fig4", "table3", "resnet1202", "resnet152-B"] {
        assert!(list.contains(needle), "list lacks {needle}:\n{list}");
    }
}
