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
/// `inputs` (standard input when empty or `-`) or `users`, whatever path names it; or
/// `output` and `rejects` being the same file.
pub fn check_outputs(
    inputs: &[PathBuf],
    users: Option<&Path>,
    output: Option<&Path>,
    rejects: Option<&Path>,
) -> Result<()> {
    let mut read: Vec<(String, FileId)> = Vec::new();
    let stdin = Path::new("-");
    for input in inputs.iter().map(PathBuf::as_path).chain(users) {
        let id = if input == stdin {
            FileId::of_std(std::io::stdin())
        } else {
            FileId::of_path(input)
        };
        read.extend(id.map(|id| (format!("{}", input.display()), id)));
    }
    if inputs.is_empty() {
        read.extend(FileId::of_std(std::io::stdin()).map(|id| ("-".to_string(), id)));
    }
    let refuse = |what: String, id: Option<FileId>| -> Result<()> {
        match read.iter().find(|(_, read)| Some(*read) == id) {
            Some((name, _)) => Err(Error::invalid(format!(
                "{what} is the input {name}: refusing to write over it"
            ))),
            None => Ok(()),
        }
    };
    match output {
        Some(path) => refuse(format!("-o {}", path.display()), FileId::of_path(path))?,
        None => refuse(
            "standard output".to_string(),
            FileId::of_std(std::io::stdout()),
        )?,
    }
    if let Some(path) = rejects {
        refuse(
            format!("--rejects {}", path.display()),
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

/// Where creating `path` would put the file: its symlinks followed, its directory made
/// absolute.
fn where_created(path: &Path) -> PathBuf {
    let mut path = path.to_path_buf();
    // As the kernel does, give up on a loop after 40 links.
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
            let err = check_outputs(&inputs, None, Some(same), None).unwrap_err();
            assert!(err.is_invalid_input());
            assert!(err.to_string().contains("is the input"), "{err}");
            let err = check_outputs(&inputs, None, None, Some(same)).unwrap_err();
            assert!(err.to_string().contains("--rejects"), "{err}");
            let err = check_outputs(&[], Some(same), Some(same), None).unwrap_err();
            assert!(err.to_string().contains("is the input"), "{err}");
        }
        let out = dir.path().join("out.ndjson");
        check_outputs(&inputs, None, Some(&out), None).unwrap();
        let err = check_outputs(
            &inputs,
            None,
            Some(&out),
            Some(&dir.path().join("sub/../out.ndjson")),
        )
        .unwrap_err();
        assert!(err.to_string().contains("different files"), "{err}");
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(&out, &dangling).unwrap();
        assert!(check_outputs(&inputs, None, Some(&out), Some(&dangling)).is_err());
        check_outputs(
            &inputs,
            None,
            Some(&out),
            Some(&dir.path().join("rejects.ndjson")),
        )
        .unwrap();
    }
}
