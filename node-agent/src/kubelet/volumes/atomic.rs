//! Upstream's atomic writer for configMap, secret, downwardAPI and projected volumes:
//! the files live in a timestamped directory `..<time>`, `..data` is a symlink to it,
//! and each top-level entry is a symlink `name -> ..data/name`. An update writes a new
//! timestamped directory and swaps `..data` with one `rename` (atomic), so a reader
//! never sees half of an update; every symlink is relative, so the volume resolves the
//! same wherever it is mounted.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path};

use k8s_openapi::jiff::Timestamp;

/// One file of a projection: its content and permission bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProjection {
    pub data: Vec<u8>,
    pub mode: u32,
}

const DATA_DIR: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

/// A relative path made of plain components (no `..`, no absolute, no `..`-prefixed
/// first component that would clash with the writer's own entries).
pub fn valid_path(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with("..")
        && Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// What the volume holds now (path → projection), read through `..data`.
fn current(dir: &Path) -> Option<BTreeMap<String, FileProjection>> {
    let data = dir.join(DATA_DIR);
    let target = std::fs::read_link(&data).ok()?;
    let mut out = BTreeMap::new();
    let mut stack = vec![(dir.join(target), String::new())];
    while let Some((d, prefix)) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()? {
            let e = e.ok()?;
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let meta = e.metadata().ok()?;
            if meta.is_dir() {
                stack.push((e.path(), rel));
            } else {
                let data = std::fs::read(e.path()).ok()?;
                out.insert(
                    rel,
                    FileProjection {
                        data,
                        mode: meta.permissions().mode() & 0o7777,
                    },
                );
            }
        }
    }
    Some(out)
}

/// Makes `dir` hold exactly `files` (relative path → projection). Returns whether it
/// changed anything (an unchanged projection writes nothing).
pub fn write(dir: &Path, files: &BTreeMap<String, FileProjection>) -> Result<bool, String> {
    for p in files.keys() {
        if !valid_path(p) {
            return Err(format!("invalid volume item path {p:?}"));
        }
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let old_target = std::fs::read_link(dir.join(DATA_DIR)).ok();
    if old_target.is_some() && current(dir).as_ref() == Some(files) {
        return Ok(false);
    }
    // 1. The new content in a fresh timestamped directory.
    let now = Timestamp::now();
    let ts = format!("..{}", now.strftime("%Y_%m_%d_%H_%M_%S.%f"));
    let ts_dir = dir.join(&ts);
    std::fs::create_dir_all(&ts_dir).map_err(io(&ts_dir))?;
    for (rel, f) in files {
        let path = ts_dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&path, &f.data).map_err(io(&path))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode))
            .map_err(io(&path))?;
    }
    // 2. Swap `..data` to it in one rename.
    let tmp = dir.join(DATA_TMP);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&ts, &tmp).map_err(io(&tmp))?;
    std::fs::rename(&tmp, dir.join(DATA_DIR)).map_err(io(dir))?;
    // 3. Top-level symlinks for new entries; stale ones removed.
    let top: BTreeSet<String> = files
        .keys()
        .filter_map(|p| p.split('/').next().map(str::to_string))
        .collect();
    for name in &top {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new(DATA_DIR).join(name), &link).map_err(io(&link))?;
        }
    }
    for e in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("..") || top.contains(&name) {
            continue;
        }
        let _ = std::fs::remove_file(e.path());
    }
    // 4. The old content goes.
    if let Some(old) = old_target {
        let old = dir.join(old);
        if old != ts_dir {
            let _ = std::fs::remove_dir_all(old);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(entries: &[(&str, &str, u32)]) -> BTreeMap<String, FileProjection> {
        entries
            .iter()
            .map(|(p, d, m)| {
                (
                    p.to_string(),
                    FileProjection {
                        data: d.as_bytes().to_vec(),
                        mode: *m,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn writes_swaps_and_cleans_up() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("vol");
        assert!(write(&dir, &files(&[("a", "1", 0o644), ("sub/b", "2", 0o400)])).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(dir.join("sub/b")).unwrap(), "2");
        assert_eq!(
            std::fs::read_link(dir.join("a")).unwrap(),
            Path::new("..data/a")
        );
        let mode = std::fs::metadata(dir.join("sub/b"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);
        let first = std::fs::read_link(dir.join("..data")).unwrap();

        // Unchanged: nothing written.
        assert!(!write(&dir, &files(&[("a", "1", 0o644), ("sub/b", "2", 0o400)])).unwrap());
        assert_eq!(std::fs::read_link(dir.join("..data")).unwrap(), first);

        // Changed: a new timestamped dir, the old one and the stale key gone.
        assert!(write(&dir, &files(&[("a", "3", 0o644), ("c", "4", 0o644)])).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "3");
        assert_eq!(std::fs::read_to_string(dir.join("c")).unwrap(), "4");
        assert!(std::fs::symlink_metadata(dir.join("sub")).is_err());
        assert!(!dir.join(&first).exists());
        let mut entries: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with("..2"))
            .collect();
        entries.sort();
        assert_eq!(entries, vec!["..data", "a", "c"]);
    }

    #[test]
    fn paths_must_stay_inside() {
        let t = tempfile::tempdir().unwrap();
        for bad in ["../x", "/etc/x", "a/../../x", "..data", ""] {
            assert!(
                write(t.path(), &files(&[(bad, "x", 0o644)])).is_err(),
                "{bad:?}"
            );
        }
    }
}
