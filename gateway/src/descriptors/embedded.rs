//! googleapis and protovalidate files compiled into the binary.
//!
//! protox ships only google/protobuf/*; services that use `google.api.http`
//! or return `google.rpc.Status` details would otherwise fail to compile
//! unless every user vendored googleapis into their descriptors folder.
//! `buf/validate/validate.proto` (the `buf.validate` rules the gateway
//! checks at the edge) is served to imports the same way.

use std::sync::OnceLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, ReflectMessage};
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

/// Files whose comments the generated OpenAPI document shows: the error
/// body (`google.rpc.Status`) and `google.api.HttpBody`, which APIs use as
/// request and response types. The rest keep no source info: their comments
/// are never read, and in a pool each comment and location is several
/// allocations, held by every snapshot.
const COMMENTED: &[&str] = &["google/rpc/status.proto", "google/api/httpbody.proto"];

/// One file of the base, kept in the two shapes the loader needs.
pub(super) struct BaseFile {
    pub name: String,
    /// Encoded with extension options intact; source info only for
    /// [`COMMENTED`] files.
    pub bytes: Vec<u8>,
    /// Without source info: read for its imports and definitions only.
    pub proto: FileDescriptorProto,
}

pub(super) struct Base {
    /// In dependency order.
    pub files: Vec<BaseFile>,
}

/// Compiled once per process: every load reuses it.
pub(super) fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(build_base)
}

/// The base files alone as a pool, decoded on first use. Not kept with
/// [`base`]: a config with descriptors never needs it, and a second copy of
/// every base file in every process cost more memory than the rest of an
/// idle gateway's routes.
pub(super) fn base_pool() -> DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut pool = DescriptorPool::new();
        for file in &base().files {
            if let Err(err) = pool.decode_file_descriptor_proto(file.bytes.as_slice()) {
                panic!("built-in descriptor {} does not decode: {err:?}", file.name);
            }
        }
        pool
    })
    .clone()
}

fn build_base() -> Base {
    let mut chain = ChainFileResolver::new();
    chain.add(EmbeddedFiles);
    chain.add(GoogleFileResolver::new());
    let mut compiler = Compiler::with_file_resolver(chain);
    compiler.include_imports(true);
    compiler.include_source_info(true);
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
    // through prost-types and would drop extension options. The compiler and
    // its pool go once the files are encoded.
    let pool = compiler.descriptor_pool();
    let files = pool
        .files()
        .map(|f| {
            let bytes = f.encode_to_vec();
            let mut proto = f.file_descriptor_proto().clone();
            proto.source_code_info = None;
            BaseFile {
                name: f.name().to_owned(),
                bytes: if COMMENTED.contains(&f.name()) {
                    bytes
                } else {
                    without_source_info(&bytes)
                },
                proto,
            }
        })
        .collect();
    Base { files }
}

/// An encoded `FileDescriptorProto` without its source info, other fields
/// (extension options too) kept as they are.
pub(super) fn without_source_info(bytes: &[u8]) -> Vec<u8> {
    let desc = FileDescriptorProto::default().descriptor();
    match DynamicMessage::decode(desc, bytes) {
        Ok(mut msg) => {
            msg.clear_field_by_name("source_code_info");
            msg.encode_to_vec()
        }
        Err(_) => bytes.to_vec(),
    }
}
