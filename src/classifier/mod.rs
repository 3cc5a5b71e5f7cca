//! The library's front door: a network ready to classify and embed images as its weights
//! expect, from published weights by name or any weights file.
//!
//! ```
//! # fn main() -> anyhow::Result<()> {
//! use resnet::Classifier;
//! use resnet::data::image::RgbImage;
//! # let path = std::env::temp_dir().join(format!("resnet-doc-{}.safetensors", std::process::id()));
//! # resnet::classifier::save_untrained("resnet20", &path)?;
//! // A file, a training checkpoint, or published weights: "cifar:resnet20", "torchvision:resnet50".
//! let classifier = Classifier::from_weights(&path)?;
//! let image = RgbImage::new(32, 32); // or resnet::data::image::decode_file("cat.jpg")?
//! let top = classifier.classify(&image, 3);
//! assert_eq!(top.len(), 3);
//! println!("{} {:.1}%", top[0].name.as_deref().unwrap_or("?"), 100.0 * top[0].probability);
//! assert_eq!(classifier.embed(&image).len(), 64); // the pooled features of a CIFAR net
//! # std::fs::remove_file(&path)?;
//! # Ok(())
//! # }
//! ```
//!
//! `classify` takes `&self` and may be called from several threads at once: each call
//! borrows a network instance from a pool (one per concurrent caller, made on demand),
//! since a forward pass needs buffers of its own.

pub mod setup;

use crate::data::image::{self, RgbImage};
use crate::data::imagenet::EvalViews;
use crate::data::{ClassList, Norm};
use crate::model::{ModelConfig, ResNet};
use crate::train::checkpoint::OPTIMIZER_PREFIX;
use crate::weights::{StateDict, View};
use anyhow::Result;
use std::path::Path;
use std::sync::Mutex;

/// One of the classes a network predicts, with its probability.
#[derive(Clone, Debug, PartialEq)]
pub struct Class {
    pub index: usize,
    /// From the weights' metadata, else ImageNet's or CIFAR's names.
    pub name: Option<String>,
    pub probability: f32,
}

pub struct Classifier {
    config: ModelConfig,
    /// The weights, for each network instance made.
    file: StateDict,
    /// Instances not in use.
    idle: Mutex<Vec<ResNet>>,
    norm: Norm,
    view: View,
    names: Option<ClassList>,
    precision: crate::engine::Precision,
}

impl Classifier {
    /// Loads weights (a file or a published name, fetched into torch's cache on first
    /// use) with the network, normalization, view and class names they record.
    pub fn from_weights(weights: impl AsRef<Path>) -> Result<Classifier> {
        let weights = weights.as_ref();
        let (net, file) = setup::load_model(None, None, weights)?;
        let Some(norm) = setup::default_norm(&net, &file, None)? else {
            anyhow::bail!(
                "{}: the weights do not record their input normalization; use Classifier::with_norm",
                weights.display()
            )
        };
        Self::with_norm(net, file, norm)
    }

    /// [`Classifier::from_weights`] for weights that do not record their normalization.
    pub fn with_norm(net: ResNet, file: StateDict, norm: Norm) -> Result<Classifier> {
        let view = setup::view(&net, &file, None, None)?;
        let names = setup::class_list(None, &file, net.classes())?.or_else(|| setup::cifar_names(&net));
        let precision = net.precision();
        Ok(Classifier { config: net.config.clone(), file, idle: Mutex::new(vec![net]), norm, view, names, precision })
    }

    /// Runs the convolutions in `precision` (default f32; bf16 is faster where the CPU
    /// has AMX or AVX-512 BF16, and close: see [`crate::engine::bf16`]).
    pub fn with_precision(mut self, precision: crate::engine::Precision) -> Classifier {
        self.precision = precision;
        for net in self.idle.get_mut().unwrap_or_else(|e| e.into_inner()) {
            net.set_precision(precision);
        }
        self
    }

    pub fn model(&self) -> &ModelConfig {
        &self.config
    }

    /// The input normalization the weights expect.
    pub fn norm(&self) -> &Norm {
        &self.norm
    }

    /// How an image is seen: shorter side resized to `view.resize`, centre crop of `view.crop`.
    pub fn view(&self) -> View {
        self.view
    }

    pub fn class_names(&self) -> Option<&[String]> {
        self.names.as_ref().map(|l| l.names.as_slice())
    }

    /// The network input for `image`: resized, centre-cropped and normalized, HWC.
    pub fn preprocess(&self, image: &RgbImage) -> Vec<f32> {
        let crop = self.view.crop;
        let views = EvalViews::Center { resize: self.view.resize, crop };
        let mut out = vec![0f32; crop * crop * 3];
        self.norm.normalize_hwc(&views.apply(image)[0].data, (crop, crop), [0.0; 3], &mut out);
        out
    }

    /// Runs `f` on a network instance of this classifier's own.
    fn with_net<T>(&self, f: impl FnOnce(&mut ResNet) -> T) -> T {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut net = idle.unwrap_or_else(|| {
            let mut net = ResNet::new(self.config.clone(), 0);
            crate::weights::load_into(&self.file, &mut net.named(), Some(OPTIMIZER_PREFIX))
                .expect("the weights loaded into the first instance");
            net.set_precision(self.precision);
            net
        });
        let out = f(&mut net);
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(net);
        out
    }

    /// The logits and pooled features of each image.
    fn run(&self, images: &[RgbImage]) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
        if images.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let input: Vec<f32> = images.iter().flat_map(|i| self.preprocess(i)).collect();
        let (n, crop, classes) = (images.len(), self.view.crop, self.config.classes);
        self.with_net(|net| {
            let logits = net.forward(false, n, (crop, crop), &input).to_vec();
            let features = net.pooled_features(n);
            let width = features.len() / n;
            (
                logits.chunks(classes).map(<[f32]>::to_vec).collect(),
                features.chunks(width).map(<[f32]>::to_vec).collect(),
            )
        })
    }

    /// The raw network outputs for each image.
    pub fn logits_batch(&self, images: &[RgbImage]) -> Vec<Vec<f32>> {
        self.run(images).0
    }

    /// The `top` most probable classes of `image`, best first.
    pub fn classify(&self, image: &RgbImage, top: usize) -> Vec<Class> {
        self.classify_batch(std::slice::from_ref(image), top).remove(0)
    }

    /// [`Classifier::classify`] for several images in one network call.
    pub fn classify_batch(&self, images: &[RgbImage], top: usize) -> Vec<Vec<Class>> {
        let classes = self.config.classes;
        self.logits_batch(images)
            .iter()
            .map(|logits| {
                let probs = crate::eval::softmax(logits, classes);
                let mut order: Vec<usize> = (0..classes).collect();
                order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
                order
                    .into_iter()
                    .take(top)
                    .map(|i| Class {
                        index: i,
                        name: self.class_names().and_then(|n| n.get(i)).cloned(),
                        probability: probs[i],
                    })
                    .collect()
            })
            .collect()
    }

    /// Decodes a JPEG or PNG file and classifies it.
    pub fn classify_file(&self, path: impl AsRef<Path>, top: usize) -> Result<Vec<Class>> {
        Ok(self.classify(&image::decode_file(path.as_ref())?, top))
    }

    /// The pooled penultimate features of `image` (64 for CIFAR nets, 512 or 2048 for
    /// ImageNet ones): the classifier's input, for retrieval or a model of one's own.
    pub fn embed(&self, image: &RgbImage) -> Vec<f32> {
        self.embed_batch(std::slice::from_ref(image)).remove(0)
    }

    pub fn embed_batch(&self, images: &[RgbImage]) -> Vec<Vec<f32>> {
        self.run(images).1
    }
}

/// Saves a randomly initialized `model` (CIFAR-10 classes, CIFAR normalization) as a
/// weights file, for examples and tests that need one without training.
pub fn save_untrained(model: &str, path: &Path) -> Result<()> {
    let mut net = ResNet::new(ModelConfig::from_name(model, None, 10)?, 0);
    let norm = Norm::from_name("cifar", None)?;
    let names = crate::data::DatasetKind::Cifar10.class_names();
    let view = View { resize: 32, crop: 32 };
    let metadata = crate::train::checkpoint::weights_metadata(&net, &norm, &names, view);
    crate::weights::save(path, &net.named(), metadata)
}
