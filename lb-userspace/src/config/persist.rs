//! Saving an API change into the operator's config file: only what changed is edited (the
//! file keeps its comments, order and layout), and the write is atomic.

use std::{io::Write as _, path::Path};

use anyhow::{Context as _, Result};

use super::model::Config;

/// Write `config` into the file at `path`, editing only what differs from what the file
/// says now, atomically: a temporary file beside it, fsync, rename, fsync of the
/// directory. A crash leaves the old file or the new one, never a mix.
pub fn persist(path: &Path, config: &Config) -> Result<()> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let edited = edited(&text, config)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("lb.toml")
    ));
    // The new file gets the old one's mode and owner: a 0600 file with secrets stays so.
    let original = std::fs::metadata(path).ok();
    let written = (|| -> Result<()> {
        let mut file =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        if let Some(meta) = &original {
            file.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
            std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid()))
                .with_context(|| format!("keeping the owner of {}", path.display()))?;
        }
        file.write_all(edited.as_bytes())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(())
    })();
    if written.is_err() {
        // A failed save leaves the old file, and no temporary one beside it.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The file's text with `config` edited in.
fn edited(text: &str, config: &Config) -> Result<String> {
    let after = toml::Table::try_from(config).context("rendering the config as TOML")?;
    // What the file means now, defaults included, so that a default it leaves out and the
    // new config keeps is not written out. A file that no longer parses is replaced whole.
    let before = toml::from_str::<Config>(text)
        .ok()
        .and_then(|c| toml::Table::try_from(&c).ok());
    match before {
        Some(before) => Ok(super::toml_merge::edit_document(text, &before, &after)?),
        None => Ok(toml::to_string(&after)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_persisted_config_reads_back_the_same() {
        let text = include_str!("../../../examples/full.toml");
        let config = Config::parse("full.toml", text).unwrap();
        let dir = std::env::temp_dir().join(format!("lb-persist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lb.toml");
        persist(&path, &config).unwrap();
        let again = Config::load(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn a_save_keeps_the_mode_and_leaves_no_temporary_file() {
        use std::os::unix::fs::PermissionsExt as _;
        let text = include_str!("../../../examples/demo.toml");
        let dir = std::env::temp_dir().join(format!("lb-persist-mode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lb.toml");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut config = Config::parse("demo.toml", text).unwrap();
        config.dataplane.gc_interval = std::time::Duration::from_secs(2);
        persist(&path, &config).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        let saved = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(mode, 0o600);
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(saved.starts_with("# The demo topology"), "{saved}");
        assert!(saved.contains("gc_interval = \"2s\""), "{saved}");
    }
}
