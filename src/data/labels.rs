//! Class lists: the names (and ImageNet synset IDs) of a model's output indices.
//!
//! Read from the 1000-class index JSON (`{"0": ["n01440764", "tench"], ...}`), or from a
//! text file with one class per line (`tench`, or `n01440764 tench, Tinca tinca`). The
//! ImageNet list is built in, so `predict` names classes without any file.

use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::path::Path;

/// Synset IDs and torchvision's class names, in ImageNet index order.
const IMAGENET: &str = include_str!("imagenet_classes.tsv");

#[derive(Clone, Debug, PartialEq)]
pub struct ClassList {
    pub names: Vec<String>,
    /// ImageNet synset ID (`n01440764`) of each class, where known.
    pub synsets: Vec<Option<String>>,
}

/// Whether `s` is an ImageNet synset ID: `n` and eight digits.
fn is_synset(s: &str) -> bool {
    s.len() == 9 && s.starts_with('n') && s[1..].bytes().all(|b| b.is_ascii_digit())
}

impl ClassList {
    /// The 1000 ImageNet classes (synsets sorted, which is the standard index order).
    pub fn imagenet() -> Self {
        let (synsets, names) = IMAGENET
            .lines()
            .map(|l| {
                let (s, n) = l.split_once('\t').expect("built-in class list is synset<TAB>name");
                (Some(s.to_string()), n.to_string())
            })
            .unzip();
        ClassList { names, synsets }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The largest labels file read: ImageNet-21k's names fit in a few MB.
    const MAX_FILE: u64 = 64 << 20;

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::files::read_text_limited(path, Self::MAX_FILE, "labels file")?;
        Self::parse(&text).with_context(|| format!("{}: not a usable labels file", path.display()))
    }

    /// A labels file's text: the class index JSON, or one name per line.
    pub fn parse(text: &str) -> Result<Self> {
        let list = if text.trim_start().starts_with('{') { Self::from_json(text) } else { Self::from_lines(text) }?;
        if list.is_empty() {
            bail!("it lists no classes");
        }
        Ok(list)
    }

    /// The class index JSON: index → [synset, name]; indices must run 0..N without gaps.
    fn from_json(text: &str) -> Result<Self> {
        let map: HashMap<String, (String, String)> =
            serde_json::from_str(text).context("expected {\"0\": [\"n01440764\", \"tench\"], ...}")?;
        let mut names = vec![None; map.len()];
        let mut synsets = vec![None; map.len()];
        for (key, (synset, name)) in map {
            let i: usize = key.parse().with_context(|| format!("key '{key}' is not a class index"))?;
            if i >= names.len() {
                bail!(
                    "class index {i} out of range: {} classes listed, so indices must be 0..{}",
                    names.len(),
                    names.len() - 1
                );
            }
            // Keys such as "1" and "01" parse to the same index; with as many keys as
            // classes, a repeat also leaves some index without a class.
            if names[i].is_some() {
                bail!("class index {i} is listed twice (key '{key}')");
            }
            names[i] = Some(name);
            synsets[i] = Some(synset);
        }
        Ok(ClassList { names: names.into_iter().flatten().collect(), synsets })
    }

    /// One class per non-empty line, optionally starting with its synset ID.
    fn from_lines(text: &str) -> Result<Self> {
        let (mut names, mut synsets) = (Vec::new(), Vec::new());
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            match line.split_once(char::is_whitespace) {
                Some((s, rest)) if is_synset(s) => {
                    synsets.push(Some(s.to_string()));
                    names.push(rest.trim().to_string());
                }
                _ if is_synset(line) => {
                    synsets.push(Some(line.to_string()));
                    names.push(line.to_string());
                }
                _ => {
                    synsets.push(None);
                    names.push(line.to_string());
                }
            }
        }
        Ok(ClassList { names, synsets })
    }

    /// The index of a class folder's name: its synset ID, or its name, exactly or else
    /// loosely (underscores and spaces treated alike, so `great_white_shark` finds `great
    /// white shark`; a name list's `tench, Tinca tinca` is found as `tench`). A name that
    /// several classes share (ImageNet has two `crane`s and two `maillot`s) is an error, not
    /// the first match.
    pub fn index_of(&self, folder: &str) -> Result<usize> {
        if let Some(i) = self.synsets.iter().position(|s| s.as_deref() == Some(folder)) {
            return Ok(i);
        }
        let matching = |matches: &dyn Fn(&str) -> bool| -> Vec<usize> {
            (self.names.iter().enumerate()).filter(|(_, n)| matches(n)).map(|(i, _)| i).collect()
        };
        let norm = |s: &str| s.replace('_', " ").to_lowercase();
        let want = norm(folder);
        let mut found = matching(&|n| n == folder);
        if found.is_empty() {
            found = matching(&|n| norm(n) == want || norm(n.split(',').next().unwrap_or(n)) == want);
        }
        match found[..] {
            [i] => Ok(i),
            [] => bail!("class folder '{folder}' is not in the labels file (by synset or name)"),
            _ if self.synsets.iter().any(Option::is_some) => {
                bail!("class folder '{folder}' names classes {found:?} of the class list; name it by its synset")
            }
            _ => bail!("class folder '{folder}' names classes {found:?} of the class list; name it exactly as one"),
        }
    }

    /// A short display name for class `i`, safe to print (names come from files).
    pub fn name(&self, i: usize) -> String {
        self.names.get(i).map_or_else(|| format!("class {i}"), |n| crate::text::printable(n).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(names: &[&str]) -> ClassList {
        ClassList { names: names.iter().map(|n| n.to_string()).collect(), synsets: vec![None; names.len()] }
    }

    #[test]
    fn an_exact_name_wins_over_loose_matches() {
        let l = list(&["Cat", "cat", "great white", "great_white", "dog, big"]);
        assert_eq!(l.index_of("cat").unwrap(), 1);
        assert_eq!(l.index_of("Cat").unwrap(), 0);
        assert_eq!(l.index_of("great_white").unwrap(), 3);
        assert_eq!(l.index_of("dog").unwrap(), 4);
        let err = l.index_of("CAT").unwrap_err().to_string();
        assert!(err.contains("[0, 1]") && err.contains("exactly"), "{err}");
        let imagenet = ClassList::imagenet();
        let err = imagenet.index_of("crane").unwrap_err().to_string();
        assert!(err.contains("[134, 517]") && err.contains("synset"), "{err}");
        assert_eq!(imagenet.index_of("n02012849").unwrap(), 134);
    }

    #[test]
    fn repeated_class_indices_are_refused() {
        let err = ClassList::from_json(r#"{"0": ["n0", "a"], "00": ["n1", "b"]}"#).unwrap_err().to_string();
        assert!(err.contains("class index 0 is listed twice"), "{err}");
    }
}
