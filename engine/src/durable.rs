//! Files written whole or not at all, shared by the checkpoint's local store and the
//! socket receiver's write-ahead log.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// Writes `bytes` to `path` atomically: a temporary file (`.<name>.tmp` beside it, so
/// listings that skip dot-files never see it), fsync, rename, fsync the directory. A
/// crash leaves the old file or the new one, and at most a temporary file behind.
/// Blocking: call it from a blocking thread (`tokio::task::spawn_blocking`).
///
/// The error names the file and the step that failed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let step = |what: &str, p: &Path| {
        let shown = p.display().to_string();
        let what = what.to_string();
        move |e: io::Error| io::Error::new(e.kind(), format!("{what} {shown}: {e}"))
    };
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other(format!("{} has no directory", path.display())))?;
    fs::create_dir_all(dir).map_err(step("creating", dir))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    {
        let mut f = fs::File::create(&tmp).map_err(step("writing", &tmp))?;
        f.write_all(bytes).map_err(step("writing", &tmp))?;
        f.sync_all().map_err(step("syncing", &tmp))?;
    }
    fs::rename(&tmp, path).map_err(step("renaming into place", path))?;
    // The rename itself is durable once the directory is synced.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_replaced_whole_and_errors_name_it() {
        let dir = std::env::temp_dir().join(format!("flumen-durable-{}", std::process::id()));
        let path = dir.join("sub").join("entry");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["entry"], "no temporary file is left");

        // A directory where the file should go: the step and the path are named.
        let blocked = dir.join("blocked");
        fs::create_dir_all(blocked.join("entry")).unwrap();
        fs::write(blocked.join("entry").join("x"), b"x").unwrap();
        let err = write_atomic(&blocked.join("entry"), b"x").unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "renaming into place {}",
                blocked.join("entry").display()
            )),
            "{err}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
