//! The examples of README.md and of every page under docs/, run as a
//! newcomer runs them: every `$ curl ...` line of a `sh` block is sent to
//! `gateway demo` (the repository's own routes.toml, descriptors and example
//! backend), in reading order (README.md, then the docs pages in the order
//! the README links them), and its answer is compared with the one the page
//! prints; every `toml` block is loaded into the demo's config.
//!
//! Ids and timestamps differ from run to run, so an answer is compared by
//! its shape: the status line when the page shows one, otherwise what
//! comes before the first `:` (`{"shelves"`, `{"result"`, `data`, `{"code"`),
//! which tells a stream from a list from an error.

use gateway_tests::binary::spawn_demo_with_admin;
use gateway_tests::repo_root;

/// A page of documentation: its path from the repository root and its text.
struct Page {
    path: String,
    text: String,
}

/// README.md, then the docs pages in the order README.md links them; a page
/// under docs/ that the README does not link is a failure (nobody would
/// find it), and so is a link to a page that does not exist.
fn pages() -> Vec<Page> {
    let root = repo_root();
    let read = |path: &str| Page {
        path: path.to_owned(),
        text: std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}")),
    };
    let readme = read("README.md");
    let mut linked: Vec<String> = Vec::new();
    for (i, _) in readme.text.match_indices("](docs/") {
        let rest = &readme.text[i + 2..];
        let target = &rest[..rest.find(')').expect("a closed link")];
        let target = target.split('#').next().unwrap_or(target).to_owned();
        if !linked.contains(&target) {
            linked.push(target);
        }
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|e| {
            format!(
                "docs/{}",
                e.expect("docs/ entry").file_name().to_string_lossy()
            )
        })
        .filter(|p| p.ends_with(".md"))
        .collect();
    on_disk.sort();
    let unlinked: Vec<&String> = on_disk.iter().filter(|p| !linked.contains(p)).collect();
    assert!(
        unlinked.is_empty(),
        "README.md does not link {unlinked:?}; add them to its Documentation list"
    );
    let mut out = vec![readme];
    out.extend(linked.iter().map(|p| read(p)));
    out
}

#[test]
fn every_docs_page_is_linked_from_the_readme() {
    let pages = pages();
    assert!(pages.len() >= 9, "{} pages", pages.len());
    assert_eq!(pages[0].path, "README.md");
}

/// One `$ curl` example: the command (continuation lines joined) and the
/// lines the page shows after it.
#[derive(Debug)]
struct Example {
    line: usize,
    command: String,
    expected: Vec<String>,
}

/// The `$ curl` examples of every ```sh block in `text`.
fn curl_examples(text: &str) -> Vec<Example> {
    let mut out: Vec<Example> = Vec::new();
    let mut in_sh = false;
    let mut continuing = false;
    for (n, line) in text.lines().enumerate() {
        if line.starts_with("```") {
            in_sh = line == "```sh" && !in_sh;
            continuing = false;
            continue;
        }
        if !in_sh {
            continue;
        }
        if continuing {
            let ex = out.last_mut().expect("a command to continue");
            ex.command.push(' ');
            ex.command.push_str(line.trim().trim_end_matches('\\'));
            continuing = line.ends_with('\\');
        } else if let Some(cmd) = line.strip_prefix("$ ") {
            if cmd.starts_with("curl ") || cmd.contains("| curl ") {
                out.push(Example {
                    line: n + 1,
                    command: cmd.trim_end_matches('\\').to_owned(),
                    expected: Vec::new(),
                });
                continuing = line.ends_with('\\');
            } else {
                // Not a curl example (gateway, docker, ...): its output
                // lines must not be taken for the previous example's.
                out.push(Example {
                    line: n + 1,
                    command: String::new(),
                    expected: Vec::new(),
                });
            }
        } else if let Some(ex) = out.last_mut() {
            ex.expected.push(line.to_owned());
        }
    }
    out.retain(|e| !e.command.is_empty());
    out
}

/// What an answer is compared by (see the module comment).
fn shape(output: &str) -> String {
    let first = output.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    if let Some(rest) = first.strip_prefix("HTTP/") {
        return rest.split_whitespace().nth(1).unwrap_or("").to_owned();
    }
    match first.split_once(':') {
        Some((head, _)) => head.to_owned(),
        // A metric line has no colon: its name is its shape.
        None => first.split('{').next().unwrap_or("").to_owned(),
    }
}

#[test]
fn curl_examples_are_found_with_their_expected_answers() {
    let text = "```sh\n$ curl -s a\n{\"x\":1}\n$ printf 'q' | curl -s \\\n    -d @- b\n{\"y\":2}\n$ gateway check\nok\n```\n```sh\n$ curl -i c\nHTTP/1.1 404 Not Found\n```\n";
    let ex = curl_examples(text);
    assert_eq!(ex.len(), 3, "{ex:?}");
    assert_eq!(ex[1].command, "printf 'q' | curl -s  -d @- b");
    assert_eq!(shape(&ex[0].expected.join("\n")), "{\"x\"");
    assert_eq!(shape(&ex[2].expected.join("\n")), "404");
    assert!(ex[1].expected == ["{\"y\":2}"]);
}

/// The routes.toml the demo child was started with (its `--config`).
fn demo_config_path(child: &tokio::process::Child) -> std::path::PathBuf {
    let pid = child.id().expect("the demo is running");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("read /proc cmdline");
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let at = args.iter().position(|a| a == "--config").expect("--config");
    std::path::PathBuf::from(&args[at + 1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_examples_of_readme_and_docs_work_against_the_demo() {
    let examples: Vec<(String, Example)> = pages()
        .into_iter()
        .flat_map(|p| {
            let path = p.path;
            curl_examples(&p.text)
                .into_iter()
                .map(move |e| (path.clone(), e))
        })
        .collect();
    assert!(
        examples.len() >= 12,
        "expected the curl examples of README.md and docs/, found {examples:?}"
    );
    for page in [
        "README.md",
        "docs/wire.md",
        "docs/streaming.md",
        "docs/operations.md",
    ] {
        assert!(
            examples.iter().any(|(p, _)| p == page),
            "no curl example found in {page}"
        );
    }
    let (mut demo, addr, admin) = spawn_demo_with_admin().await;
    let config = demo_config_path(&demo);
    let mut failures = Vec::new();
    for (page, ex) in &examples {
        let command = ex
            .command
            .replace("localhost:8080", &addr)
            .replace("localhost:9901", &admin);
        // The one example that needs a precondition says so in a comment.
        let broken = ex.command.contains("# after breaking routes.toml");
        let good = std::fs::read_to_string(&config).expect("read the demo's config");
        if broken {
            std::fs::write(
                &config,
                good.replace("Bookstore/ListBooks\"", "Bookstore/ListBoks\""),
            )
            .expect("break the demo's config");
        }
        let out = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .output()
            .await
            .expect("run sh");
        if broken {
            std::fs::write(&config, &good).expect("restore the demo's config");
        }
        let got = String::from_utf8_lossy(&out.stdout).into_owned();
        let want = shape(&ex.expected.join("\n"));
        // `curl ... | head -c 200` stops reading early: curl's exit code
        // then says "write error", which is not the gateway's doing.
        let pipe_cut = command.contains("| head");
        if (!out.status.success() && !pipe_cut) || got.trim().is_empty() {
            failures.push(format!(
                "{page}:{}: `{}` failed ({}): {}{}",
                ex.line,
                ex.command,
                out.status,
                got,
                String::from_utf8_lossy(&out.stderr)
            ));
        } else if !ex.expected.is_empty() && shape(&got) != want {
            failures.push(format!(
                "{page}:{}: `{}` answered\n{got}\nbut {page} shows\n{}",
                ex.line,
                ex.command,
                ex.expected.join("\n")
            ));
        }
    }
    demo.start_kill().expect("kill the demo gateway");
    let _ = demo.wait().await;
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The ```toml blocks of `text`, with the line each starts on.
fn toml_blocks(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        match (&mut current, line) {
            (None, "```toml") => current = Some((n + 2, String::new())),
            (Some(_), l) if l.starts_with("```") => out.extend(current.take()),
            (Some((_, body)), l) => {
                body.push_str(l);
                body.push('\n');
            }
            (None, _) => {}
        }
    }
    out
}

/// `block` applied to `base` as an operator would paste it into the demo's
/// routes.toml: its tables merge key by key (its values win), a backend it
/// defines replaces the demo's of that name, and each of its routes replaces
/// the demo's route on the same method and path, or is added.
fn merge(base: &mut toml::Table, block: toml::Table) {
    for (key, value) in block {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(v)) if key == "backends" => {
                b.extend(v);
            }
            (Some(toml::Value::Table(b)), toml::Value::Table(v)) => merge(b, v),
            (Some(toml::Value::Array(b)), toml::Value::Array(v)) if key == "routes" => {
                for route in v {
                    let same = |r: &toml::Value| {
                        r.get("method") == route.get("method") && r.get("path") == route.get("path")
                    };
                    b.retain(|r| !same(r));
                    b.push(route);
                }
            }
            (_, v) => {
                base.insert(key, v);
            }
        }
    }
}

#[tokio::test]
async fn every_toml_block_of_readme_and_docs_loads_into_the_demo_config() {
    let blocks: Vec<(String, usize, String)> = pages()
        .into_iter()
        .flat_map(|p| {
            let path = p.path;
            toml_blocks(&p.text)
                .into_iter()
                .map(move |(line, block)| (path.clone(), line, block))
        })
        .collect();
    assert!(
        blocks.len() >= 10,
        "found only {} toml blocks",
        blocks.len()
    );
    let demo: toml::Table = std::fs::read_to_string(repo_root().join("routes.toml"))
        .expect("routes.toml")
        .parse()
        .expect("routes.toml is TOML");
    let mut failures = Vec::new();
    for (page, line, block) in blocks {
        let parsed: toml::Table = match block.parse() {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("{page}:{line}: not TOML: {e}"));
                continue;
            }
        };
        let mut config = demo.clone();
        merge(&mut config, parsed);
        let dir = gateway_tests::temp_dir("readme-toml");
        support_files(&dir);
        config["server"]["descriptors"] =
            toml::Value::String(repo_root().join("descriptors").display().to_string());
        let path = dir.join("routes.toml");
        std::fs::write(&path, toml::to_string(&config).expect("serialise")).unwrap();
        if let Err(e) = gateway::snapshot::Snapshot::load(&path) {
            failures.push(format!(
                "{page}:{line}: the block does not load:\n{e}\n---\n{block}"
            ));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Files and variables the examples point at: an Ed25519 public key
/// for `pem_files`, an HMAC secret for `hmac_secret_env`, and certificates
/// (made here, no key checked in) for `[server.tls]` and its `client_ca`.
fn support_files(dir: &std::path::Path) {
    std::fs::create_dir_all(dir.join("tls")).unwrap();
    for name in ["api.example.com", "*.example.com"] {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let stem = name.replace('*', "wildcard");
        std::fs::write(dir.join(format!("tls/{stem}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("tls/{stem}.key")), key.serialize_pem()).unwrap();
    }
    // The authorities client certificates chain to (`client_ca`).
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("tls/clients-ca.pem"), ca.pem()).unwrap();
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    std::fs::write(
        dir.join("keys/partner.pem"),
        "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    // Safe here: no other test of this binary reads the environment.
    std::env::set_var(
        "INTERNAL_JWT_SECRET",
        "an-example-secret-of-at-least-32-bytes!",
    );
}
