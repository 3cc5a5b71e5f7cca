//! From a weights file to a network ready for inference: building the network the
//! weights are for, and choosing its input normalization, view and class names. Shared
//! by the `Classifier` and the `eval`, `predict`, `embed` and `responses` commands.

use crate::data::imagenet::EvalViews;
use crate::data::{ClassList, DatasetKind, Norm};
use crate::model::{Family, ModelConfig, ResNet, Shortcut};
use crate::train::checkpoint::OPTIMIZER_PREFIX;
use crate::weights::{self, StateDict, View, registry};
use anyhow::{Result, bail};
use std::path::Path;

/// Builds the network with the classes its weights were trained for (read off the
/// classifier's shape) and loads the weights: a file (safetensors, `.pth`, a checkpoint) or
/// published weights by name (`torchvision:resnet50`, fetched into torch's cache). The
/// network is `model`, else the one the weights record.
pub fn load_model(model: Option<&str>, shortcut: Option<Shortcut>, weights: &Path) -> Result<(ResNet, StateDict)> {
    let (path, published) = registry::resolve(weights)?;
    let mut file = StateDict::read(&path)?;
    if let Some(p) = published {
        // Published files record nothing: the registry knows their preprocessing.
        for (k, v) in p.metadata() {
            file.metadata.entry(k).or_insert(v);
        }
    }
    let recorded = file.metadata.get("model").cloned();
    let Some(model) = model.map(str::to_string).or(recorded) else {
        bail!("{}: the weights do not record their network; pass --model (resnet info lists them)", path.display());
    };
    let model = model.as_str();
    let shortcut = shortcut.or_else(|| file.metadata.get("shortcut").and_then(|s| s.parse().ok()));
    let error = match load_checked(model, shortcut, &file) {
        Ok(net) => return Ok((net, file)),
        Err(e) => e,
    };
    // Weights of another depth fail on the first key that differs; say which net they fit.
    let keys = file.tensors.iter().map(|(k, _)| k.as_str());
    match ModelConfig::guess_from_keys(keys) {
        Some(fits) if !fits.split(" or ").any(|n| n == model.to_ascii_lowercase()) => {
            bail!("{error:#} (the file holds the weights of a {fits}, not a {model})")
        }
        _ => Err(error),
    }
}

fn load_checked(model: &str, shortcut: Option<Shortcut>, file: &StateDict) -> Result<ResNet> {
    let path = &file.path;
    let probe = ModelConfig::from_name(model, shortcut, 1)?;
    let (_, classifier) = probe.naming();
    let key = format!("{classifier}.weight");
    let features = probe.features();
    let classes = match file.find(&key) {
        Some(t) if t.shape.len() == 2 && t.shape[0] > 0 && t.shape[1] == features => t.shape[0],
        Some(t) => bail!("{}: key '{key}': expected shape [classes, {features}], found {:?}", path.display(), t.shape),
        None => bail!("{}: missing key '{key}' (the classifier of a {model})", path.display()),
    };
    let mut net = ResNet::new(ModelConfig::from_name(model, shortcut, classes)?, 0);
    weights::load_into(file, &mut net.named(), Some(OPTIMIZER_PREFIX))?;
    Ok(net)
}

/// A network ready to classify or embed single images: its weights, the normalization they
/// expect (a CIFAR net's weights that do not record one could expect any of three, so no
/// guess) and the centre view to see images at.
pub fn for_inference(
    model: Option<&str>,
    shortcut: Option<Shortcut>,
    weights: &Path,
    norm: Option<&str>,
    resize: Option<usize>,
    crop: Option<usize>,
) -> Result<(ResNet, StateDict, Norm, EvalViews)> {
    let (net, file) = load_model(model, shortcut, weights)?;
    let Some(norm) = default_norm(&net, &file, norm)? else {
        bail!("{}: the weights do not record their input normalization; pass --norm imagenet|cifar", weights.display());
    };
    let v = view(&net, &file, resize, crop)?;
    Ok((net, file, norm, EvalViews::Center { resize: v.resize, crop: v.crop }))
}

/// The view to evaluate at: the flags where given, else the one recorded with the
/// weights, else the family's own (CIFAR 32×32 as is; ImageNet shorter side 256, crop 224).
pub fn view(net: &ResNet, file: &StateDict, resize: Option<usize>, crop: Option<usize>) -> Result<View> {
    let default = match weights::metadata_view(file)? {
        Some(v) => v,
        None if net.config.family == Family::Cifar => View { resize: 32, crop: 32 },
        None => View { resize: 256, crop: 224 },
    };
    let crop = crop.unwrap_or(default.crop);
    // A crop given alone keeps the recorded proportion (224 of 256: 8/7).
    let resize =
        resize.unwrap_or(if crop == default.crop { default.resize } else { crop * default.resize / default.crop });
    if crop > resize {
        bail!(
            "a centre crop of {crop} does not fit in an image whose shorter side is resized to {resize}: lower --crop or raise --resize"
        );
    }
    Ok(View { resize, crop })
}

/// Normalization for a model without recorded normalization: torchvision's for ImageNet
/// networks (its published weights expect it).
pub fn default_norm(net: &ResNet, file: &StateDict, flag: Option<&str>) -> Result<Option<Norm>> {
    if let Some(name) = flag.filter(|n| *n != "pixel-mean") {
        return Ok(Some(Norm::from_name(name, None)?));
    }
    if let Some(n) = weights::metadata_norm(file)? {
        return Ok(Some(n));
    }
    if net.config.family == Family::ImageNet && flag.is_none() {
        return Ok(Some(Norm::from_name("imagenet", None)?));
    }
    Ok(None)
}

/// Class names: a labels file, else those recorded with the weights, else ImageNet's for
/// a 1000-class model.
pub fn class_list(labels: Option<&Path>, file: &StateDict, classes: usize) -> Result<Option<ClassList>> {
    if let Some(l) = labels {
        let list = ClassList::from_file(l)?;
        if list.len() != classes {
            bail!("{}: lists {} classes, but the model has {classes}", l.display(), list.len());
        }
        return Ok(Some(list));
    }
    if let Some(names) = weights::metadata_class_names(file)?.filter(|n| n.len() == classes) {
        let synsets = vec![None; names.len()];
        return Ok(Some(ClassList { names, synsets }));
    }
    Ok((classes == 1000).then(ClassList::imagenet))
}

/// CIFAR-10's or CIFAR-100's class names for a CIFAR network of 10 or 100 classes, to show
/// its predictions by (not to map folders: those keep their sorted order).
pub fn cifar_names(net: &ResNet) -> Option<ClassList> {
    let kind = match (net.config.family, net.classes()) {
        (Family::Cifar, 10) => DatasetKind::Cifar10,
        (Family::Cifar, 100) => DatasetKind::Cifar100,
        _ => return None,
    };
    Some(ClassList { names: kind.class_names(), synsets: vec![None; kind.classes()] })
}
