//! The library API: `Classifier` scores the published ResNet-20 as PyTorch does (932 of
//! the 1017 exact official test images), gives the same answers from several threads at
//! once, and says what is missing.

mod common;

use resnet::Classifier;
use resnet::classifier::setup;
use resnet::data::Norm;
use resnet::data::image::RgbImage;

/// The images and labels of CIFAR binary records (label byte, then R, G and B planes).
fn cifar_images(bytes: &[u8]) -> (Vec<RgbImage>, Vec<usize>) {
    bytes
        .chunks_exact(3073)
        .map(|r| {
            let mut img = RgbImage::new(32, 32);
            for p in 0..1024 {
                for c in 0..3 {
                    img.data[p * 3 + c] = r[1 + c * 1024 + p];
                }
            }
            (img, r[0] as usize)
        })
        .unzip()
}

fn published() -> Option<(Classifier, Vec<RgbImage>, Vec<usize>)> {
    let weights = common::shared_data("resnet-cifar10-pretrained/resnet20-12fca82f.safetensors")?;
    let test = common::shared_data("cifar-10-official-partial/test_batch.first1017.bin")?;
    let (net, file) = setup::load_model(Some("resnet20"), None, &weights).unwrap();
    // Its training normalized with ImageNet's mean and std (the data's README).
    let classifier = Classifier::with_norm(net, file, Norm::from_name("imagenet", None).unwrap()).unwrap();
    let (images, labels) = cifar_images(&std::fs::read(test).unwrap());
    Some((classifier, images, labels))
}

#[test]
fn the_published_resnet20_scores_what_pytorch_scores() {
    let Some((classifier, images, labels)) = published() else { return };
    let mut correct = 0;
    for (chunk, truth) in images.chunks(128).zip(labels.chunks(128)) {
        for (top, &label) in classifier.classify_batch(chunk, 5).iter().zip(truth) {
            assert_eq!(top.len(), 5);
            assert!(top.windows(2).all(|w| w[0].probability >= w[1].probability));
            correct += usize::from(top[0].index == label);
        }
    }
    assert_eq!(correct, 932);
    let first = classifier.classify(&images[0], 1);
    assert_eq!(
        first[0].name.as_deref(),
        Some(
            ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"][first[0].index]
        )
    );
    assert_eq!(classifier.embed(&images[0]).len(), 64);
}

#[test]
fn several_threads_share_one_classifier() {
    let Some((classifier, images, _)) = published() else { return };
    let images = &images[..64];
    let alone = classifier.logits_batch(images);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(|| classifier.logits_batch(images))).collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), alone);
        }
    });
}

#[test]
fn weights_bring_their_preprocessing_and_missing_facts_are_named() {
    let dir = common::temp_dir("classifier");
    let path = dir.join("untrained.safetensors");
    resnet::classifier::save_untrained("resnet20", &path).unwrap();
    let classifier = Classifier::from_weights(&path).unwrap();
    assert_eq!(classifier.model().name(), "resnet20");
    assert_eq!((classifier.view().resize, classifier.view().crop), (32, 32));
    assert_eq!(classifier.class_names().unwrap()[3], "cat");
    // A 64×48 photo is seen at 32×32, as the weights record.
    assert_eq!(classifier.preprocess(&RgbImage::new(64, 48)).len(), 32 * 32 * 3);
    let Some(bare) = common::shared_data("resnet-cifar10-pretrained/resnet20-12fca82f.safetensors") else { return };
    let e = Classifier::from_weights(&bare).err().unwrap().to_string();
    assert!(e.contains("resnet20-12fca82f.safetensors") && e.contains("do not record their network"), "{e}");
}
