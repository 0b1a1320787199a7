//! routes.toml as text, not a file: what the Consul KV source hands the
//! reload path (and what the KV cache holds).

use std::path::PathBuf;

use super::{ConfigErrors, LoadedFile, Origin};

/// routes.toml held as text rather than read from `--config`: a Consul KV
/// value (or the cached copy of one). Relative paths in it resolve against
/// the current directory, since a KV value has no folder of its own.
#[derive(Debug, Clone)]
pub struct TextInput {
    /// Shown in errors where a file path would be: `consul:<key>`, or the
    /// cache file's path.
    pub name: PathBuf,
    pub text: String,
    /// The folder holding the descriptors written out from KV; replaces
    /// `server.descriptors` when set.
    pub descriptors: Option<PathBuf>,
    pub origin: Origin,
}

impl TextInput {
    /// Parses the text as routes.toml, as [`LoadedFile::read`] does a file.
    pub fn parse(&self) -> Result<LoadedFile, ConfigErrors> {
        let mut file = LoadedFile::parse(&self.name, &self.text)?;
        file.base = None;
        file.origin = self.origin;
        if let Some(dir) = &self.descriptors {
            file.config.server.descriptors =
                toml::Spanned::new(0..0, dir.to_string_lossy().into_owned());
        }
        Ok(file)
    }
}
