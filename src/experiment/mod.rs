//! The paper's experiments as values: which networks each trains with which recipe, what
//! it draws and tabulates, and the paper's own numbers to set beside ours. The runner
//! trains them as ordinary run directories (`runner`); the report is written from what
//! they recorded (`report`).

pub mod report;
pub mod runner;

use crate::model::Shortcut;
use crate::train::recipe::Recipe;
use anyhow::{Result, bail};

/// One network of an experiment; its run directory is `OUT/<name>` (and `<name>-seedK`).
#[derive(Clone, Copy, Debug)]
pub struct RunSpec {
    pub name: &'static str,
    pub model: &'static str,
    pub shortcut: Option<Shortcut>,
    /// The paper's error (%) of this network in the experiment's table: top-1, top-5.
    pub paper: (Option<f64>, Option<f64>),
}

/// A figure of training curves: one panel per group of runs.
#[derive(Clone, Copy, Debug)]
pub struct Panel {
    pub title: &'static str,
    pub runs: &'static [&'static str],
}

#[derive(Clone, Copy, Debug)]
pub enum Figure {
    /// Error against iterations: training error thin and dashed, test error bold.
    Curves { file: &'static str, panels: &'static [Panel] },
    /// Fig. 7: the std of each 3×3 layer's response, in layer order and sorted.
    Responses { file: &'static str },
}

#[derive(Clone, Copy, Debug)]
pub struct Experiment {
    /// The paper's label, and others that name the same runs.
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    /// What of the paper it reproduces.
    pub artifact: &'static str,
    /// What the paper finds, for the report.
    pub finding: &'static str,
    pub recipe: Recipe,
    pub runs: &'static [RunSpec],
    pub figures: &'static [Figure],
    /// The title of the paper's table the runs' errors are set beside, if any.
    pub table: Option<&'static str>,
}

const fn run(name: &'static str, model: &'static str, top1: Option<f64>) -> RunSpec {
    RunSpec { name, model, shortcut: None, paper: (top1, None) }
}

const fn imagenet(name: &'static str, model: &'static str, s: Shortcut, top1: f64, top5: Option<f64>) -> RunSpec {
    RunSpec { name, model, shortcut: Some(s), paper: (Some(top1), top5) }
}

const PLAIN_CIFAR: [RunSpec; 4] = [
    run("plain20", "plain20", None),
    run("plain32", "plain32", None),
    run("plain44", "plain44", None),
    run("plain56", "plain56", None),
];

/// Table 6's errors.
const RESNET_CIFAR: [RunSpec; 6] = [
    run("resnet20", "resnet20", Some(8.75)),
    run("resnet32", "resnet32", Some(7.51)),
    run("resnet44", "resnet44", Some(7.17)),
    run("resnet56", "resnet56", Some(6.97)),
    run("resnet110", "resnet110", Some(6.43)),
    run("resnet1202", "resnet1202", Some(7.93)),
];

const FIG6_RUNS: [RunSpec; 10] = [
    PLAIN_CIFAR[0],
    PLAIN_CIFAR[1],
    PLAIN_CIFAR[2],
    PLAIN_CIFAR[3],
    RESNET_CIFAR[0],
    RESNET_CIFAR[1],
    RESNET_CIFAR[2],
    RESNET_CIFAR[3],
    RESNET_CIFAR[4],
    RESNET_CIFAR[5],
];

pub const EXPERIMENTS: &[Experiment] = &[
    Experiment {
        name: "fig1",
        aliases: &[],
        artifact: "Fig. 1: training and test error of 20- and 56-layer plain nets on CIFAR-10",
        finding: "the deeper plain net has higher training error, and so higher test error (degradation)",
        recipe: Recipe::Cifar,
        runs: &[run("plain20", "plain20", None), run("plain56", "plain56", None)],
        figures: &[Figure::Curves {
            file: "fig1",
            panels: &[Panel { title: "plain nets", runs: &["plain20", "plain56"] }],
        }],
        table: None,
    },
    Experiment {
        name: "fig6",
        aliases: &["table6"],
        artifact: "Fig. 6 and Table 6: plain nets and ResNets of 20 to 1202 layers on CIFAR-10",
        finding: "deeper plain nets train worse; deeper ResNets train and test better up to 110 layers; ResNet-1202 reaches a training error like 110's but over-fits",
        recipe: Recipe::Cifar,
        runs: &FIG6_RUNS,
        figures: &[Figure::Curves {
            file: "fig6",
            panels: &[
                Panel { title: "plain nets", runs: &["plain20", "plain32", "plain44", "plain56"] },
                Panel { title: "ResNets", runs: &["resnet20", "resnet32", "resnet44", "resnet56", "resnet110"] },
                Panel { title: "ResNet-110 and ResNet-1202", runs: &["resnet110", "resnet1202"] },
            ],
        }],
        table: Some("Table 6: CIFAR-10 test error (%)"),
    },
    Experiment {
        name: "fig7",
        aliases: &[],
        artifact: "Fig. 7: standard deviations of the 3x3 layers' responses on CIFAR-10",
        finding: "ResNets respond less than their plain twins, and deeper ResNets less than shallower ones",
        recipe: Recipe::Cifar,
        runs: &[PLAIN_CIFAR[0], PLAIN_CIFAR[3], RESNET_CIFAR[0], RESNET_CIFAR[3], RESNET_CIFAR[4]],
        figures: &[Figure::Responses { file: "fig7" }],
        table: None,
    },
    Experiment {
        name: "fig4",
        aliases: &["table2"],
        artifact: "Fig. 4 and Table 2: plain and residual (option A) nets of 18 and 34 layers on ImageNet",
        finding: "plain-34 trains worse than plain-18; ResNet-34 trains and tests better than ResNet-18 and plain-34",
        recipe: Recipe::ImageNet,
        runs: &[
            imagenet("plain18", "plain18", Shortcut::A, 27.94, None),
            imagenet("plain34", "plain34", Shortcut::A, 28.54, None),
            imagenet("resnet18-A", "resnet18", Shortcut::A, 27.88, None),
            imagenet("resnet34-A", "resnet34", Shortcut::A, 25.03, None),
        ],
        figures: &[Figure::Curves {
            file: "fig4",
            panels: &[
                Panel { title: "plain nets", runs: &["plain18", "plain34"] },
                Panel { title: "ResNets (option A)", runs: &["resnet18-A", "resnet34-A"] },
            ],
        }],
        table: Some("Table 2: ImageNet top-1 error (%), 10-crop"),
    },
    Experiment {
        name: "table3",
        aliases: &[],
        artifact: "Table 3: shortcut options A/B/C and deeper bottleneck ResNets on ImageNet",
        finding: "B is slightly better than A and C slightly better than B; 50/101/152 layers are better still",
        recipe: Recipe::ImageNet,
        runs: &[
            imagenet("plain34", "plain34", Shortcut::A, 28.54, Some(10.02)),
            imagenet("resnet34-A", "resnet34", Shortcut::A, 25.03, Some(7.76)),
            imagenet("resnet34-B", "resnet34", Shortcut::B, 24.52, Some(7.46)),
            imagenet("resnet34-C", "resnet34", Shortcut::C, 24.19, Some(7.40)),
            imagenet("resnet50-B", "resnet50", Shortcut::B, 22.85, Some(6.71)),
            imagenet("resnet101-B", "resnet101", Shortcut::B, 21.75, Some(6.05)),
            imagenet("resnet152-B", "resnet152", Shortcut::B, 21.43, Some(5.71)),
        ],
        figures: &[],
        table: Some("Table 3: ImageNet error (%), 10-crop"),
    },
];

/// The experiment called `name` (its label or an alias, any case).
pub fn find(name: &str) -> Result<&'static Experiment> {
    let name = name.to_ascii_lowercase();
    match EXPERIMENTS.iter().find(|e| e.name == name || e.aliases.contains(&name.as_str())) {
        Some(e) => Ok(e),
        None => {
            let names: Vec<String> = EXPERIMENTS
                .iter()
                .flat_map(|e| std::iter::once(e.name).chain(e.aliases.iter().copied()))
                .map(String::from)
                .collect();
            bail!("unknown experiment '{name}' (expected one of {})", names.join(", "))
        }
    }
}

impl Experiment {
    /// Its runs, or those of them named in `only`.
    pub fn selected_runs(&self, only: &[String]) -> Result<Vec<RunSpec>> {
        if only.is_empty() {
            return Ok(self.runs.to_vec());
        }
        only.iter()
            .map(|want| match self.runs.iter().find(|r| r.name.eq_ignore_ascii_case(want)) {
                Some(r) => Ok(*r),
                None => {
                    let names: Vec<&str> = self.runs.iter().map(|r| r.name).collect();
                    bail!("{} has no run '{want}' (its runs: {})", self.name, names.join(", "))
                }
            })
            .collect()
    }

    pub fn has_responses(&self) -> bool {
        self.figures.iter().any(|f| matches!(f, Figure::Responses { .. }))
    }
}
