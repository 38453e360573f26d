//! The files of a run: none of them may overwrite what it reads.

use std::fs::{File, Metadata};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Which file a path or descriptor is: its device and inode, however it is named (a symlink, a
/// hard link, another relative spelling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    /// The regular file at `path` (following symlinks); `None` if there is none.
    pub fn of_path(path: &Path) -> Option<FileId> {
        FileId::of_regular(&std::fs::metadata(path).ok()?)
    }

    /// The regular file an open file is; `None` for a pipe, a terminal or a device.
    pub fn of_file(file: &File) -> Option<FileId> {
        FileId::of_regular(&file.metadata().ok()?)
    }

    /// The regular file standard input (`fd` 0) or output (`fd` 1) is redirected from or to.
    #[cfg(unix)]
    fn of_std(stream: impl std::os::fd::AsFd) -> Option<FileId> {
        FileId::of_file(&File::from(stream.as_fd().try_clone_to_owned().ok()?))
    }

    #[cfg(not(unix))]
    fn of_std<T>(_: T) -> Option<FileId> {
        None
    }

    #[cfg(unix)]
    fn of_regular(meta: &Metadata) -> Option<FileId> {
        use std::os::unix::fs::MetadataExt;
        meta.is_file().then(|| FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    #[cfg(not(unix))]
    fn of_regular(_: &Metadata) -> Option<FileId> {
        None
    }
}

/// Refuses, before anything is created or truncated, a run that would write over a file it
/// reads: `output` or `rejects` (standard output when `output` is `None`) being one of
/// `inputs` (standard input when empty or `-`) or one of `also_read`, whatever path names it;
/// or `output` and `rejects` being the same file.
///
/// `also_read` are the other files the run reads or keeps, each with what it is to the run as
/// the error names it: `("the --users file", path)`, `("the store", path)`; `-` is standard
/// input, compared as the file it is redirected from. One that does not exist yet is compared
/// by where it would be created, so a store that the run is about to create is guarded too.
pub fn check_outputs(
    inputs: &[PathBuf],
    also_read: &[(&str, &Path)],
    output: Option<&Path>,
    rejects: Option<&Path>,
) -> Result<()> {
    let mut read: Vec<(String, FileId)> = Vec::new();
    let stdin = Path::new("-");
    // What standard input is redirected from, for every reader that names it.
    let stdin_id = FileId::of_std(std::io::stdin());
    for input in inputs {
        let id = if input == stdin {
            stdin_id
        } else {
            FileId::of_path(input)
        };
        read.extend(id.map(|id| (format!("the input {}", input.display()), id)));
    }
    if inputs.is_empty() {
        read.extend(stdin_id.map(|id| ("the input -".to_string(), id)));
    }
    let (piped, named): (Vec<_>, Vec<_>) = also_read.iter().partition(|(_, path)| *path == stdin);
    for (role, _) in piped {
        read.extend(stdin_id.map(|id| (format!("{role} -"), id)));
    }
    let refuse = |what: String, path: Option<&Path>, id: Option<FileId>| -> Result<()> {
        let input = read.iter().find(|(_, read)| Some(*read) == id);
        let other = named.iter().find(|(_, read)| match path {
            Some(path) => same_path(path, read),
            None => id.is_some() && FileId::of_path(read) == id,
        });
        let name = match (input, other) {
            (Some((name, _)), _) => name.clone(),
            (None, Some((role, read))) => format!("{role} {}", read.display()),
            (None, None) => return Ok(()),
        };
        Err(Error::invalid(format!(
            "{what} is {name}: refusing to write over it"
        )))
    };
    match output {
        Some(path) => refuse(
            format!("-o {}", path.display()),
            Some(path),
            FileId::of_path(path),
        )?,
        None => refuse(
            "standard output".to_string(),
            None,
            FileId::of_std(std::io::stdout()),
        )?,
    }
    if let Some(path) = rejects {
        refuse(
            format!("--rejects {}", path.display()),
            Some(path),
            FileId::of_path(path),
        )?;
        let same = match output {
            Some(output) => same_path(output, path),
            None => FileId::of_path(path)
                .is_some_and(|id| FileId::of_std(std::io::stdout()) == Some(id)),
        };
        if same {
            return Err(Error::invalid(format!(
                "--rejects {} is the output too: they must be different files",
                path.display()
            )));
        }
    }
    Ok(())
}

/// True if two paths name the same file, existing or about to be created.
fn same_path(a: &Path, b: &Path) -> bool {
    match (FileId::of_path(a), FileId::of_path(b)) {
        (Some(a), Some(b)) => a == b,
        (None, None) => where_created(a) == where_created(b),
        _ => false,
    }
}

/// Where `path` leads once its symbolic links are followed (itself if it is none): for a link
/// to nothing, the name it points to, which is where creating `path` makes the file. At most
/// 40 links are followed, as the kernel does, so a loop ends.
pub fn follow_links(path: &Path) -> PathBuf {
    let mut path = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::read_link(&path) {
            Ok(target) => {
                path = match path.parent() {
                    Some(dir) => dir.join(target),
                    None => target,
                }
            }
            Err(_) => break,
        }
    }
    path
}

/// Where creating `path` would put the file: its symlinks followed, its directory made
/// absolute.
fn where_created(path: &Path) -> PathBuf {
    let path = follow_links(path);
    let dir = match path.parent() {
        Some(dir) if dir.as_os_str().is_empty() => Path::new("."),
        Some(dir) => dir,
        None => return path,
    };
    match (std::fs::canonicalize(dir), path.file_name()) {
        (Ok(dir), Some(name)) => dir.join(name),
        _ => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_that_are_inputs_are_refused_however_named() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.ndjson");
        std::fs::write(&input, "{}\n").unwrap();
        let link = dir.path().join("link.ndjson");
        std::os::unix::fs::symlink(&input, &link).unwrap();
        let hard = dir.path().join("hard.ndjson");
        std::fs::hard_link(&input, &hard).unwrap();
        let spelled = dir.path().join("sub/../in.ndjson");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let inputs = [input.clone()];
        for same in [&input, &link, &hard, &spelled] {
            let err = check_outputs(&inputs, &[], Some(same), None).unwrap_err();
            assert!(err.is_invalid_input());
            assert!(err.to_string().contains("is the input"), "{err}");
            let err = check_outputs(&inputs, &[], None, Some(same)).unwrap_err();
            assert!(err.to_string().contains("--rejects"), "{err}");
            let users = [("the --users file", input.as_path())];
            let err = check_outputs(&[], &users, Some(same), None).unwrap_err();
            assert!(err.to_string().contains("is the --users file"), "{err}");
        }
        let out = dir.path().join("out.ndjson");
        check_outputs(&inputs, &[], Some(&out), None).unwrap();
        let err = check_outputs(
            &inputs,
            &[],
            Some(&out),
            Some(&dir.path().join("sub/../out.ndjson")),
        )
        .unwrap_err();
        assert!(err.to_string().contains("different files"), "{err}");
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(&out, &dangling).unwrap();
        assert!(check_outputs(&inputs, &[], Some(&out), Some(&dangling)).is_err());
        check_outputs(
            &inputs,
            &[],
            Some(&out),
            Some(&dir.path().join("rejects.ndjson")),
        )
        .unwrap();
    }

    /// The store is kept by the run: no output may be it, not even one the run is about to
    /// create (`run --users` makes a new store before its outputs).
    #[test]
    fn outputs_that_are_the_store_are_refused_even_before_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("enrich.db");
        let spelled = dir.path().join("sub/../enrich.db");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let inputs = [dir.path().join("in.ndjson")];
        let also = [("the store", store.as_path())];
        for exists in [false, true] {
            if exists {
                std::fs::write(&store, "").unwrap();
            }
            for out in [&store, &spelled] {
                let err = check_outputs(&inputs, &also, Some(out), None).unwrap_err();
                assert!(err.is_invalid_input());
                assert!(err.to_string().contains("is the store"), "{err}");
                let err = check_outputs(&inputs, &also, None, Some(out)).unwrap_err();
                assert!(err.to_string().contains("--rejects"), "{err}");
            }
            let out = dir.path().join("out.ndjson");
            check_outputs(&inputs, &also, Some(&out), None).unwrap();
        }
    }
}
