//! Reading, compiling and merging a descriptors folder into one pool.

use std::{
    collections::{HashMap, HashSet},
    fs, io,
    path::{Path, PathBuf},
};

use prost::Message;
use prost_reflect::DescriptorPool;
use prost_types::FileDescriptorProto;
use protox::{
    file::{ChainFileResolver, File, FileResolver, GoogleFileResolver, IncludeFileResolver},
    Compiler,
};

use super::{embedded, DescriptorError, LoadedDescriptors, SourceFile, SourceKind};

/// A FileDescriptorSet whose files stay raw bytes.
///
/// Decoding through prost-types would silently drop extension options such
/// as `google.api.http`, so files are only ever decoded by prost-reflect.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct RawFileDescriptorSet {
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub file: Vec<Vec<u8>>,
}

/// Shown instead of a path when a built-in file is involved in an error.
const BUILT_IN: &str = "<built-in googleapis and well-known types>";

/// One descriptor file (a FileDescriptorProto) offered by a source.
struct Candidate {
    name: String,
    bytes: Vec<u8>,
    source: usize,
}

/// A candidate that made it into the pool.
struct Accepted {
    name: String,
    bytes: Vec<u8>,
    /// Canonical form used to tell identical copies from differing ones.
    normalized: Vec<u8>,
    proto: FileDescriptorProto,
    /// Index into the sources; `None` for built-in files.
    source: Option<usize>,
}

pub(super) fn load_dir(dir: &Path) -> Result<LoadedDescriptors, DescriptorError> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(DescriptorError::NotADir { path: dir.into() }),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Err(DescriptorError::MissingDir { path: dir.into() })
        }
        Err(source) => {
            return Err(DescriptorError::Read {
                path: dir.into(),
                source,
            })
        }
    }

    let mut errors = Vec::new();
    let mut found = Vec::new();
    let mut visited = HashSet::new();
    walk(dir, Path::new(""), &mut found, &mut visited, &mut errors);
    found.sort_by(|a, b| a.0.cmp(&b.0));

    // Read and decode every input before compiling, so .proto files may
    // import files that only a pre-built set provides.
    let mut sources = Vec::new();
    let mut candidates: Vec<Vec<Candidate>> = Vec::new();
    for (rel, kind) in found {
        let path = dir.join(&rel);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(source) => {
                errors.push(DescriptorError::Read { path, source });
                continue;
            }
        };
        let index = sources.len();
        let mut proto_files = Vec::new();
        let mut files = Vec::new();
        match kind {
            SourceKind::DescriptorSet => match split_set(&bytes) {
                Ok(set) => {
                    for (name, bytes) in set {
                        proto_files.push(name.clone());
                        files.push(Candidate {
                            name,
                            bytes,
                            source: index,
                        });
                    }
                }
                Err(reason) => errors.push(DescriptorError::InvalidSet {
                    path: path.clone(),
                    reason,
                }),
            },
            SourceKind::Proto => match proto_name(&rel) {
                Some(name) => proto_files.push(name),
                None => errors.push(DescriptorError::Invalid {
                    path: path.clone(),
                    message: "the path is not valid UTF-8; rename it".into(),
                }),
            },
        }
        sources.push(SourceFile {
            path,
            kind,
            content_hash: fnv1a64(&bytes),
            sha256: crate::config::sha256(&bytes),
            proto_files,
        });
        candidates.push(files);
    }

    compile_protos(dir, &sources, &mut candidates, &mut errors);
    DescriptorError::collect(errors)?;

    let accepted = merge(candidates.into_iter().flatten(), &sources)?;
    let pool = build_pool(accepted, &sources)?;
    tracing::debug!(
        dir = %dir.display(),
        sources = sources.len(),
        files = pool.files().len(),
        "loaded descriptors"
    );
    Ok(LoadedDescriptors {
        pool,
        files: sources,
    })
}

/// Collects descriptor inputs below `dir`, relative to the root.
///
/// Hidden entries are skipped because Kubernetes ConfigMap volumes keep the
/// real files in `..data`/`..<timestamp>` dirs next to symlinks to them; reading
/// both would define everything twice.
fn walk(
    root: &Path,
    rel: &Path,
    out: &mut Vec<(PathBuf, SourceKind)>,
    visited: &mut HashSet<PathBuf>,
    errors: &mut Vec<DescriptorError>,
) {
    let dir = root.join(rel);
    // Symlinked folders are followed; remembering canonical paths stops loops.
    if let Ok(canonical) = fs::canonicalize(&dir) {
        if !visited.insert(canonical) {
            return;
        }
    }
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(source) => {
            errors.push(DescriptorError::Read { path: dir, source });
            return;
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => names.push(entry.file_name()),
            Err(source) => errors.push(DescriptorError::Read {
                path: dir.clone(),
                source,
            }),
        }
    }
    names.sort();
    for name in names {
        let child = rel.join(&name);
        if name.to_string_lossy().starts_with('.') {
            tracing::debug!(path = %root.join(&child).display(), "skipping hidden entry");
            continue;
        }
        // `fs::metadata` follows symlinks, so links to files count as files.
        let meta = match fs::metadata(root.join(&child)) {
            Ok(meta) => meta,
            Err(source) => {
                errors.push(DescriptorError::Read {
                    path: root.join(&child),
                    source,
                });
                continue;
            }
        };
        if meta.is_dir() {
            walk(root, &child, out, visited, errors);
        } else if let Some(kind) = kind_of(&child) {
            out.push((child, kind));
        } else {
            tracing::debug!(
                path = %root.join(&child).display(),
                "ignoring file that is neither .proto nor a descriptor set (.binpb, .pb, .desc)"
            );
        }
    }
}

fn kind_of(path: &Path) -> Option<SourceKind> {
    match path.extension()?.to_str()? {
        "proto" => Some(SourceKind::Proto),
        "binpb" | "pb" | "desc" => Some(SourceKind::DescriptorSet),
        _ => None,
    }
}

/// The import name of a folder file: its relative path with '/' separators.
fn proto_name(rel: &Path) -> Option<String> {
    let parts = rel
        .components()
        .map(|c| c.as_os_str().to_str())
        .collect::<Option<Vec<_>>>()?;
    Some(parts.join("/"))
}

fn split_set(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let set = RawFileDescriptorSet::decode(bytes).map_err(|e| e.to_string())?;
    if set.file.is_empty() {
        // Random bytes often decode as an empty set; an empty set is never intended.
        return Err("it contains no files".into());
    }
    set.file
        .into_iter()
        .map(|raw| {
            let proto = FileDescriptorProto::decode(raw.as_slice()).map_err(|e| e.to_string())?;
            if proto.name().is_empty() {
                return Err("a file in it has no name".into());
            }
            Ok((proto.name().to_owned(), raw))
        })
        .collect()
}

/// Serves files from pre-built sets to protox, keeping their raw bytes so
/// their extension options survive.
struct SetFiles(HashMap<String, Vec<u8>>);

impl FileResolver for SetFiles {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match self.0.get(name) {
            Some(bytes) => File::decode_file_descriptor_proto(bytes.as_slice())
                .map_err(|e| protox::Error::new(format!("{name}: {e}"))),
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

/// Compiles every .proto source with one protox compiler, so a file imported
/// by several others is parsed once, and appends each result to the
/// candidates of its source.
fn compile_protos(
    dir: &Path,
    sources: &[SourceFile],
    candidates: &mut [Vec<Candidate>],
    errors: &mut Vec<DescriptorError>,
) {
    let protos: Vec<(usize, &str)> = sources
        .iter()
        .enumerate()
        .filter(|(_, s)| s.kind == SourceKind::Proto)
        .filter_map(|(i, s)| s.proto_files.first().map(|n| (i, n.as_str())))
        .collect();
    if protos.is_empty() {
        return;
    }

    let mut set_files = HashMap::new();
    for candidate in candidates.iter().flatten() {
        set_files
            .entry(candidate.name.clone())
            .or_insert_with(|| candidate.bytes.clone());
    }
    let provided: HashSet<String> = set_files
        .keys()
        .cloned()
        .chain(protos.iter().map(|(_, n)| (*n).to_owned()))
        .chain(embedded::base().files.iter().map(|f| f.name.clone()))
        .collect();

    // An absolute root: protox strips the include root from names that start
    // with it, which would mangle `descriptors/x.proto` inside `./descriptors`.
    let root = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut chain = ChainFileResolver::new();
    chain.add(IncludeFileResolver::new(root));
    chain.add(embedded::EmbeddedFiles);
    chain.add(SetFiles(set_files));
    chain.add(GoogleFileResolver::new());
    let mut compiler = Compiler::with_file_resolver(chain);
    // Keep comments: the generated OpenAPI document uses them as descriptions.
    compiler.include_source_info(true);

    let mut compiled = Vec::new();
    let mut reported = HashSet::new();
    for &(index, name) in &protos {
        match compiler.open_file(name) {
            Ok(_) => compiled.push((index, name)),
            Err(err) => {
                // A broken import fails every importer the same way; say it once.
                let err = compile_error(dir, &sources[index].path, &err);
                if reported.insert(err.to_string()) {
                    errors.push(err);
                }
            }
        }
    }

    let pool = compiler.descriptor_pool();
    let mut orphans_taken = HashSet::new();
    for (index, name) in compiled {
        let Some(file) = pool.get_file_by_name(name) else {
            continue;
        };
        candidates[index].push(Candidate {
            name: name.to_owned(),
            bytes: file.encode_to_vec(),
            source: index,
        });
        // Imports no other source provides (e.g. under a hidden folder)
        // would otherwise be missing from the pool.
        let mut stack: Vec<_> = file.dependencies().collect();
        while let Some(dep) = stack.pop() {
            if provided.contains(dep.name()) || !orphans_taken.insert(dep.name().to_owned()) {
                continue;
            }
            stack.extend(dep.dependencies());
            candidates[index].push(Candidate {
                name: dep.name().to_owned(),
                bytes: dep.encode_to_vec(),
                source: index,
            });
        }
    }
}

fn compile_error(dir: &Path, source: &Path, err: &protox::Error) -> DescriptorError {
    let debug = format!("{err:?}");
    let mut message = match err.file() {
        // protox names files relative to the include root; show the real path.
        Some(file) if debug.starts_with(file) && debug[file.len()..].starts_with(':') => {
            format!("{}{}", dir.join(file).display(), &debug[file.len()..])
        }
        Some(file) => format!("{}: {debug}", dir.join(file).display()),
        None => format!("{}: {debug}", source.display()),
    };
    if err.is_file_not_found() {
        message.push_str(
            "; imports are resolved relative to the descriptors folder, so add the missing \
             file there (google/api, google/rpc and google/protobuf files are built in)",
        );
    }
    DescriptorError::Compile {
        path: source.to_path_buf(),
        message,
    }
}

/// Google-owned files are often vendored at different versions; they are
/// compatible enough that keeping the first copy beats refusing to start.
fn is_google_file(name: &str) -> bool {
    ["google/protobuf/", "google/api/", "google/rpc/"]
        .iter()
        .any(|p| name.starts_with(p))
}

fn source_path(sources: &[SourceFile], source: Option<usize>) -> PathBuf {
    source.map_or_else(|| PathBuf::from(BUILT_IN), |i| sources[i].path.clone())
}

fn merge(
    candidates: impl Iterator<Item = Candidate>,
    sources: &[SourceFile],
) -> Result<Vec<Accepted>, DescriptorError> {
    let mut errors = Vec::new();
    let mut accepted: Vec<Accepted> = Vec::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    let mut warned = HashSet::new();

    for candidate in candidates {
        // Canonical bytes for comparison: re-encoded in field order and
        // without source info, which differs between otherwise identical builds.
        let normalized = embedded::without_source_info(&candidate.bytes);
        if let Some(&i) = by_name.get(&candidate.name) {
            let first = &accepted[i];
            if first.normalized == normalized {
                continue;
            }
            if is_google_file(&candidate.name) {
                if warned.insert(candidate.name.clone()) {
                    tracing::warn!(
                        file = %candidate.name,
                        kept = %source_path(sources, first.source).display(),
                        ignored = %sources[candidate.source].path.display(),
                        "differing copies of a Google descriptor file; keeping the first"
                    );
                }
                continue;
            }
            let second =
                FileDescriptorProto::decode(candidate.bytes.as_slice()).unwrap_or_default();
            errors.push(DescriptorError::Conflict {
                symbol: first_difference(&first.proto, &second)
                    .unwrap_or_else(|| candidate.name.clone()),
                first: source_path(sources, first.source),
                second: sources[candidate.source].path.clone(),
                detail: format!(" (two different copies of {})", candidate.name),
            });
            continue;
        }
        let proto = FileDescriptorProto::decode(candidate.bytes.as_slice()).unwrap_or_default();
        by_name.insert(candidate.name.clone(), accepted.len());
        accepted.push(Accepted {
            name: candidate.name,
            bytes: candidate.bytes,
            normalized,
            proto,
            source: Some(candidate.source),
        });
    }

    // The same type under two different file names cannot share a pool.
    let mut owners: HashMap<String, usize> = HashMap::new();
    for (i, file) in accepted.iter().enumerate() {
        for symbol in symbols(&file.proto) {
            if let Some(&j) = owners.get(&symbol) {
                if j == i {
                    continue;
                }
                let first = &accepted[j];
                errors.push(DescriptorError::Conflict {
                    symbol,
                    first: source_path(sources, first.source),
                    second: source_path(sources, file.source),
                    detail: format!(" (in files {} and {})", first.name, file.name),
                });
            } else {
                owners.insert(symbol, i);
            }
        }
    }
    DescriptorError::collect(std::mem::take(&mut errors))?;

    // Built-in files fill in whatever the folder did not provide, so
    // google.api.http and google.rpc.Status always resolve.
    let mut present: HashSet<String> = accepted.iter().map(|a| a.name.clone()).collect();
    for file in &embedded::base().files {
        if present.contains(&file.name) {
            continue;
        }
        let missing_dep = file.proto.dependency.iter().find(|d| !present.contains(*d));
        let clash = symbols(&file.proto).find(|s| owners.contains_key(s));
        if missing_dep.is_some() || clash.is_some() {
            tracing::warn!(
                file = %file.name,
                clash = clash.as_deref().unwrap_or(""),
                "not adding built-in descriptor file: the descriptors folder defines its types differently"
            );
            continue;
        }
        present.insert(file.name.clone());
        accepted.push(Accepted {
            name: file.name.clone(),
            bytes: file.bytes.clone(),
            normalized: Vec::new(),
            proto: file.proto.clone(),
            source: None,
        });
    }

    for file in &accepted {
        for import in &file.proto.dependency {
            if !present.contains(import) {
                errors.push(DescriptorError::MissingImport {
                    path: source_path(sources, file.source),
                    file: file.name.clone(),
                    import: import.clone(),
                });
            }
        }
    }
    DescriptorError::collect(errors)?;
    Ok(accepted)
}

/// Fully-qualified names of the top-level definitions of a file.
fn symbols(file: &FileDescriptorProto) -> impl Iterator<Item = String> + '_ {
    let qualify = move |name: &str| {
        if file.package().is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", file.package())
        }
    };
    file.message_type
        .iter()
        .map(|m| m.name())
        .chain(file.enum_type.iter().map(|e| e.name()))
        .chain(file.service.iter().map(|s| s.name()))
        .chain(file.extension.iter().map(|e| e.name()))
        .map(qualify)
}

/// The first top-level definition that differs between two copies of a file,
/// so the error points at a type rather than just the file name.
fn first_difference(a: &FileDescriptorProto, b: &FileDescriptorProto) -> Option<String> {
    fn diff<T: PartialEq>(a: &[T], b: &[T], name: impl Fn(&T) -> &str) -> Option<String> {
        a.iter()
            .find(|x| !b.iter().any(|y| y == *x))
            .or_else(|| b.iter().find(|y| !a.iter().any(|x| x == *y)))
            .map(|x| name(x).to_owned())
    }
    let local = diff(&a.message_type, &b.message_type, |m| m.name())
        .or_else(|| diff(&a.service, &b.service, |s| s.name()))
        .or_else(|| diff(&a.enum_type, &b.enum_type, |e| e.name()))
        .or_else(|| diff(&a.extension, &b.extension, |e| e.name()))?;
    Some(if b.package().is_empty() {
        local
    } else {
        format!("{}.{local}", b.package())
    })
}

fn build_pool(
    accepted: Vec<Accepted>,
    sources: &[SourceFile],
) -> Result<DescriptorPool, DescriptorError> {
    let owner: HashMap<String, Option<usize>> = accepted
        .iter()
        .map(|a| (a.name.clone(), a.source))
        .collect();
    let set = RawFileDescriptorSet {
        file: accepted.into_iter().map(|a| a.bytes).collect(),
    };
    // Decoded (not converted from prost-types) so extension options survive.
    DescriptorPool::decode(set.encode_to_vec().as_slice()).map_err(|err| {
        let source = err.file().and_then(|f| owner.get(f).copied()).flatten();
        DescriptorError::Invalid {
            path: source_path(sources, source),
            message: format!("{err:?}"),
        }
    })
}

/// FNV-1a, 64 bit: stable across Rust versions and runs, unlike
/// `DefaultHasher`, so hashes can be logged and compared between reloads.
pub(super) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}
