//! googleapis and protovalidate files compiled into the binary.
//!
//! protox ships only google/protobuf/*; services that use `google.api.http`
//! or return `google.rpc.Status` details would otherwise fail to compile
//! unless every user vendored googleapis into their descriptors folder.
//! `buf/validate/validate.proto` (the `buf.validate` rules the gateway
//! checks at the edge) is served to imports the same way.

use std::sync::OnceLock;

use prost_reflect::DescriptorPool;
use prost_types::FileDescriptorProto;
use protox::{
    file::{ChainFileResolver, File, FileResolver, GoogleFileResolver},
    Compiler,
};

/// (import name, source) of every embedded googleapis file.
pub(super) const GOOGLEAPIS: &[(&str, &str)] = &[
    (
        "google/api/annotations.proto",
        include_str!("googleapis/google/api/annotations.proto"),
    ),
    (
        "google/api/field_behavior.proto",
        include_str!("googleapis/google/api/field_behavior.proto"),
    ),
    (
        "google/api/http.proto",
        include_str!("googleapis/google/api/http.proto"),
    ),
    (
        "google/api/httpbody.proto",
        include_str!("googleapis/google/api/httpbody.proto"),
    ),
    (
        "google/rpc/status.proto",
        include_str!("googleapis/google/rpc/status.proto"),
    ),
    (
        "google/rpc/error_details.proto",
        include_str!("googleapis/google/rpc/error_details.proto"),
    ),
];

/// Files served to imports but compiled only when a descriptor imports
/// them: `buf/validate/validate.proto` is 5,000 lines of options most
/// deployments never use, and every file in the base pool costs memory in
/// every snapshot.
pub(super) const ON_IMPORT: &[(&str, &str)] = &[(
    "buf/validate/validate.proto",
    include_str!("buf/validate/validate.proto"),
)];

/// The well-known types protox's `GoogleFileResolver` can serve; all of them
/// go into the base pool so JSON mapping of any WKT always works.
const WELL_KNOWN: &[&str] = &[
    "google/protobuf/any.proto",
    "google/protobuf/api.proto",
    "google/protobuf/descriptor.proto",
    "google/protobuf/duration.proto",
    "google/protobuf/empty.proto",
    "google/protobuf/field_mask.proto",
    "google/protobuf/source_context.proto",
    "google/protobuf/struct.proto",
    "google/protobuf/timestamp.proto",
    "google/protobuf/type.proto",
    "google/protobuf/wrappers.proto",
    "google/protobuf/compiler/plugin.proto",
];

/// Serves [`GOOGLEAPIS`] and [`ON_IMPORT`] to protox imports.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct EmbeddedFiles;

impl FileResolver for EmbeddedFiles {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match GOOGLEAPIS.iter().chain(ON_IMPORT).find(|(n, _)| *n == name) {
            Some((name, source)) => File::from_source(name, source),
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

/// One file of the base pool, kept in the three shapes the loader needs.
pub(super) struct BaseFile {
    pub name: String,
    /// Encoded with extension options intact.
    pub bytes: Vec<u8>,
    pub proto: FileDescriptorProto,
}

pub(super) struct Base {
    pub pool: DescriptorPool,
    /// In dependency order.
    pub files: Vec<BaseFile>,
}

/// Compiled once per process: every load and every `base_pool()` reuses it.
pub(super) fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(build_base)
}

fn build_base() -> Base {
    let mut chain = ChainFileResolver::new();
    chain.add(EmbeddedFiles);
    chain.add(GoogleFileResolver::new());
    let mut compiler = Compiler::with_file_resolver(chain);
    compiler.include_imports(true);
    for name in GOOGLEAPIS
        .iter()
        .map(|(n, _)| *n)
        .chain(WELL_KNOWN.iter().copied())
    {
        // The inputs are fixed at build time and covered by tests, so a
        // failure here is a bug in this module, not a user error.
        if let Err(err) = compiler.open_file(name) {
            panic!("built-in descriptor {name} does not compile: {err:?}");
        }
    }
    // `descriptor_pool()` rather than `file_descriptor_set()`: the latter goes
    // through prost-types and would drop extension options.
    let pool = compiler.descriptor_pool();
    let files = pool
        .files()
        .map(|f| BaseFile {
            name: f.name().to_owned(),
            bytes: f.encode_to_vec(),
            proto: f.file_descriptor_proto().clone(),
        })
        .collect();
    Base { pool, files }
}
