use std::{io, path::PathBuf};

/// Why the descriptors folder could not be loaded.
///
/// Every message names the offending file and says what to do about it,
/// because operators read these at startup or reload, not developers.
#[derive(Debug, thiserror::Error)]
pub enum DescriptorError {
    #[error(
        "descriptors folder {} does not exist; set server.descriptors in routes.toml",
        .path.display()
    )]
    MissingDir { path: PathBuf },

    #[error(
        "descriptors folder {} is not a folder; set server.descriptors in routes.toml \
         to a folder of .proto and .binpb files",
        .path.display()
    )]
    NotADir { path: PathBuf },

    #[error("{}: cannot read it: {source}; check that it exists and is readable", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "{}: not a valid FileDescriptorSet: {reason}; \
         regenerate it with protoc --include_imports --descriptor_set_out",
        .path.display()
    )]
    InvalidSet { path: PathBuf, reason: String },

    /// `message` already starts with the failing file (and line when known).
    #[error("{message}")]
    Compile { path: PathBuf, message: String },

    #[error(
        "conflicting definition of {symbol} in {} and {}{detail}; keep only one of them",
        .first.display(),
        .second.display()
    )]
    Conflict {
        symbol: String,
        first: PathBuf,
        second: PathBuf,
        /// Extra context such as the two descriptor file names, or empty.
        detail: String,
    },

    #[error(
        "{}: {file} imports {import}, which no file in the descriptors folder defines; \
         regenerate it with protoc --include_imports --descriptor_set_out, or add the missing file",
        .path.display()
    )]
    MissingImport {
        path: PathBuf,
        file: String,
        import: String,
    },

    #[error("{}: {message}", .path.display())]
    Invalid { path: PathBuf, message: String },

    /// Several files are broken; reported together so one reload fixes them all.
    #[error("{}", lines(.0))]
    Many(Vec<DescriptorError>),
}

fn lines(errors: &[DescriptorError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl DescriptorError {
    /// One error stays itself; several become `Many` (never nested).
    pub(super) fn collect(mut errors: Vec<DescriptorError>) -> Result<(), DescriptorError> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(DescriptorError::Many(
                errors
                    .into_iter()
                    .flat_map(|e| match e {
                        DescriptorError::Many(inner) => inner,
                        other => vec![other],
                    })
                    .collect(),
            )),
        }
    }
}
