//! Published weights by name: `torchvision:resnet50`, `torchvision:resnet50.v2`,
//! `cifar:resnet56`. Each entry knows its file, where it is published, the preprocessing
//! it expects and its published accuracy. Files go to torch's cache
//! (`$TORCH_HOME/hub/checkpoints`, default `~/.cache/torch/hub/checkpoints`), so a file a
//! user already has from PyTorch is used as it is; the first 8 hex digits of a file's
//! SHA-256 are in its name (torch hub's convention) and are checked on every use.

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One published set of weights.
#[derive(Clone, Debug)]
pub struct Published {
    /// `source:model` or `source:model.v2`.
    pub name: &'static str,
    /// The `--model` these weights fit.
    pub model: &'static str,
    /// `<stem>-<first 8 hex digits of its SHA-256>.<ext>`.
    pub file: &'static str,
    /// Where the file is published, without the file name.
    pub base_url: &'static str,
    /// Input normalization (`imagenet`), shorter side and centre crop.
    pub norm: &'static str,
    pub resize: usize,
    pub crop: usize,
    pub dataset: &'static str,
    /// Published top-1 and top-5 accuracy (%) on its test set.
    pub top1: f64,
    pub top5: Option<f64>,
}

const TORCHVISION: &str = "https://download.pytorch.org/models";
const AKAMASTER: &str = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models";

const fn imagenet(
    name: &'static str,
    model: &'static str,
    file: &'static str,
    resize: usize,
    top1: f64,
    top5: f64,
) -> Published {
    Published {
        name,
        model,
        file,
        base_url: TORCHVISION,
        norm: "imagenet",
        resize,
        crop: 224,
        dataset: "ImageNet val",
        top1,
        top5: Some(top5),
    }
}

const fn cifar(name: &'static str, model: &'static str, file: &'static str, top1: f64) -> Published {
    Published {
        name,
        model,
        file,
        base_url: AKAMASTER,
        // The published CIFAR nets were trained on ImageNet's channel statistics.
        norm: "imagenet",
        resize: 32,
        crop: 32,
        dataset: "CIFAR-10 test",
        top1,
        top5: None,
    }
}

/// torchvision's ResNet weights (IMAGENET1K_V1 and, as `.v2`, IMAGENET1K_V2 with its
/// 232-pixel resize) and the CIFAR-10 ResNets of github.com/akamaster/pytorch_resnet_cifar10.
pub const REGISTRY: [Published; 14] = [
    imagenet("torchvision:resnet18", "resnet18", "resnet18-f37072fd.pth", 256, 69.758, 89.078),
    imagenet("torchvision:resnet34", "resnet34", "resnet34-b627a593.pth", 256, 73.314, 91.420),
    imagenet("torchvision:resnet50", "resnet50", "resnet50-0676ba61.pth", 256, 76.130, 92.862),
    imagenet("torchvision:resnet50.v2", "resnet50", "resnet50-11ad3fa6.pth", 232, 80.858, 95.434),
    imagenet("torchvision:resnet101", "resnet101", "resnet101-63fe2227.pth", 256, 77.374, 93.546),
    imagenet("torchvision:resnet101.v2", "resnet101", "resnet101-cd907fc2.pth", 232, 81.886, 95.780),
    imagenet("torchvision:resnet152", "resnet152", "resnet152-394f9c45.pth", 256, 78.312, 94.046),
    imagenet("torchvision:resnet152.v2", "resnet152", "resnet152-f82ba261.pth", 232, 82.284, 96.002),
    cifar("cifar:resnet20", "resnet20", "resnet20-12fca82f.th", 91.73),
    cifar("cifar:resnet32", "resnet32", "resnet32-d509ac18.th", 92.63),
    cifar("cifar:resnet44", "resnet44", "resnet44-014dd654.th", 93.10),
    cifar("cifar:resnet56", "resnet56", "resnet56-4bfd9763.th", 93.39),
    cifar("cifar:resnet110", "resnet110", "resnet110-1d1ed7c2.th", 93.68),
    cifar("cifar:resnet1202", "resnet1202", "resnet1202-f3b1deed.th", 93.82),
];

impl Published {
    /// The entry called `name` (any case), if `name` has a registry's form `source:model`.
    pub fn find(name: &str) -> Result<Option<&'static Published>> {
        let Some((source, _)) = name.split_once(':') else { return Ok(None) };
        if !matches!(source.to_ascii_lowercase().as_str(), "torchvision" | "cifar") {
            return Ok(None);
        }
        match REGISTRY.iter().find(|p| p.name.eq_ignore_ascii_case(name)) {
            Some(p) => Ok(Some(p)),
            None => bail!(
                "unknown published weights '{name}' (resnet weights list names them: {})",
                REGISTRY.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    /// The metadata our own weights files carry, for these weights: what eval and
    /// predict read to choose the normalization, view and model.
    pub fn metadata(&self) -> HashMap<String, String> {
        let norm = crate::data::Norm::from_name(self.norm, None).expect("a named normalization");
        let view = super::View { resize: self.resize, crop: self.crop };
        HashMap::from([
            ("model".to_string(), self.model.to_string()),
            ("norm".to_string(), serde_json::to_string(&norm).expect("norm serializes")),
            ("view".to_string(), serde_json::to_string(&view).expect("view serializes")),
        ])
    }

    /// The hex SHA-256 prefix in the file's name.
    fn hash_prefix(&self) -> &'static str {
        let stem = self.file.rsplit_once('.').map_or(self.file, |(s, _)| s);
        stem.rsplit_once('-').map_or("", |(_, h)| h)
    }

    /// Where the file is fetched from: its publisher, or `$RESNET_WEIGHTS_MIRROR/<file>`.
    pub fn url(&self) -> String {
        match std::env::var("RESNET_WEIGHTS_MIRROR") {
            Ok(mirror) if !mirror.is_empty() => format!("{}/{}", mirror.trim_end_matches('/'), self.file),
            _ => format!("{}/{}", self.base_url, self.file),
        }
    }

    /// The local copy, fetched first when there is none or it does not match its hash.
    pub fn fetch(&self, progress: bool) -> Result<PathBuf> {
        let path = cache_dir().join(self.file);
        if path.is_file() {
            if sha256_of(&path)?.starts_with(self.hash_prefix()) {
                return Ok(path);
            }
            eprintln!(
                "{}: does not match its SHA-256 prefix {}; fetching it again",
                path.display(),
                self.hash_prefix()
            );
        }
        let dir = cache_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create the weights cache", dir.display()))?;
        let url = self.url();
        self.download(&url, &path, progress).with_context(|| {
            format!(
                "{}: cannot fetch {url} (without a network, download it by hand and put it at {})",
                self.name,
                path.display()
            )
        })?;
        Ok(path)
    }

    fn download(&self, url: &str, path: &Path, progress: bool) -> Result<()> {
        let mut hasher = Sha256::new();
        let label = format!("downloading {}", self.file);
        let tmp =
            crate::data::download::fetch(url, path, &label, progress, 4 << 30, &mut |chunk| hasher.update(chunk))?;
        let digest = hex(&hasher.finalize());
        if !digest.starts_with(self.hash_prefix()) {
            bail!(
                "{url}: SHA-256 {digest} does not start with {}: a corrupt or foreign file, not kept",
                self.hash_prefix()
            );
        }
        tmp.persist(path)
    }
}

/// Resolves `--weights`: a registry name is fetched (or found in the cache), with the
/// metadata its preprocessing needs; anything else is a path.
pub fn resolve(weights: &Path) -> Result<(PathBuf, Option<&'static Published>)> {
    let Some(name) = weights.to_str() else { return Ok((weights.to_path_buf(), None)) };
    if weights.exists() {
        return Ok((weights.to_path_buf(), None));
    }
    match Published::find(name)? {
        Some(p) => Ok((p.fetch(true)?, Some(p))),
        None => Ok((weights.to_path_buf(), None)),
    }
}

/// torch's checkpoint cache: `$TORCH_HOME/hub/checkpoints`, else
/// `$XDG_CACHE_HOME/torch/hub/checkpoints`, else `~/.cache/torch/hub/checkpoints`.
pub fn cache_dir() -> PathBuf {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let torch_home = env("TORCH_HOME").unwrap_or_else(|| {
        let cache =
            env("XDG_CACHE_HOME").unwrap_or_else(|| env("HOME").unwrap_or_else(|| PathBuf::from(".")).join(".cache"));
        cache.join("torch")
    });
    torch_home.join("hub").join("checkpoints")
}

fn sha256_of(path: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    crate::files::for_each_chunk(path, &mut |chunk| hasher.update(chunk))?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_names_a_known_model_and_its_hash() {
        for p in &REGISTRY {
            crate::model::ModelConfig::from_name(p.model, None, 10).unwrap();
            assert_eq!(p.hash_prefix().len(), 8, "{}", p.name);
            assert!(p.hash_prefix().chars().all(|c| c.is_ascii_hexdigit()), "{}", p.name);
            assert_eq!(Published::find(p.name).unwrap().unwrap().file, p.file);
        }
        assert!(Published::find("torchvision:resnet9").is_err());
        assert!(Published::find("runs/resnet20/model.safetensors").unwrap().is_none());
        assert_eq!(Published::find("TorchVision:ResNet50.V2").unwrap().unwrap().file, "resnet50-11ad3fa6.pth");
    }
}
