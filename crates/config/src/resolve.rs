//! The file system side of validation: making paths absolute (lexically, so deploy-style
//! symlinks such as `/srv/app/current` are kept), checking that scripts exist and are executable,
//! and looking programs up in `PATH`.

use std::ffi::OsStr;
use std::fs::Metadata;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// `path` made absolute against `base` (itself absolute), with `.` and `..` removed lexically.
pub(crate) fn absolute(base: &Path, path: &Path) -> PathBuf {
    normalize(&base.join(path))
}

/// Removes `.` and `..` components without touching the file system (`..` at `/` stays at `/`).
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() && !path.is_absolute() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// Whether any execute bit is set.
pub(crate) fn is_executable(meta: &Metadata) -> bool {
    meta.permissions().mode() & 0o111 != 0
}

/// The first executable regular file named `name` in the absolute directories of `path_var`.
pub(crate) fn find_in_path(name: &str, path_var: Option<&OsStr>) -> Option<PathBuf> {
    let dirs = path_var?;
    std::env::split_paths(dirs)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate).is_ok_and(|m| m.is_file() && is_executable(&m))
        })
}

/// A bare program name (no `/`), to be looked up in `PATH`.
pub(crate) fn is_bare(name: &str) -> bool {
    !name.contains('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_is_lexical() {
        assert_eq!(normalize(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
        assert_eq!(normalize(Path::new("/../x")), PathBuf::from("/x"));
        assert_eq!(
            absolute(Path::new("/srv/app"), Path::new("../lib/run.sh")),
            PathBuf::from("/srv/lib/run.sh")
        );
        assert_eq!(
            absolute(Path::new("/srv/app"), Path::new("/opt/x")),
            PathBuf::from("/opt/x")
        );
    }

    #[test]
    fn path_lookup_finds_only_executable_files() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("tool");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "").unwrap();
        std::fs::create_dir(dir.path().join("subdir")).unwrap();
        let path_var = std::env::join_paths(["relative/dir".as_ref(), dir.path()]).unwrap();
        assert_eq!(find_in_path("tool", Some(&path_var)), Some(exe));
        assert_eq!(find_in_path("plain", Some(&path_var)), None);
        assert_eq!(find_in_path("subdir", Some(&path_var)), None);
        assert_eq!(find_in_path("tool", None), None);
    }
}
