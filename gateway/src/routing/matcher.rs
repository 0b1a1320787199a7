//! Route table: templates compiled into a trie keyed by segment.
//!
//! Each trie level is one template segment; a node has its literal children
//! (a short list, or a hash map once there are many) plus at most one `*`
//! child and one `**` child. Routes sharing a
//! prefix share nodes, so a lookup walks the path once and its cost depends
//! on the path and the template shapes, not on how many routes exist.
//!
//! Priority is literal > `*` > `**` at every level, decided depth-first, and
//! the search is method-aware: when the best-matching route has another
//! method, lower-priority routes are still tried before answering 405. `**`
//! is lazy (it takes as few segments as it can), and only a template with
//! several `**` can make the search backtrack more than linearly, which a
//! step budget caps.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;

use super::escape::{self, EscapeError};
use super::template::{Segment, Template};

/// Steps (trie nodes visited) allowed per search. Ordinary lookups use a
/// handful; a path of the maximum URI length against a trailing `**` stays
/// well below it. Only pathological splits among several `**` reach it.
const STEP_BUDGET: usize = 1 << 18;

/// A node's index in [`Matcher::nodes`]; 32 bits halve the child links of
/// a node, and a table of four billion nodes would not fit in memory anyway.
type NodeId = u32;
type RouteId = usize;

/// Literal children kept in a list up to this many; past it, a hash map.
/// Scanning a few short strings is as quick as hashing one, and a list is a
/// tenth of an empty map's size: most nodes of a large table have one child
/// (issue 24: memory per route).
const FEW_LITERALS: usize = 8;

/// Routes by method and path template, generic over the payload so the
/// router can be tested without the gRPC machinery.
#[derive(Clone)]
pub struct Matcher<T> {
    nodes: Vec<Node>,
    routes: Vec<Route<T>>,
    /// Every verb in use, so a `:` in an ordinary path segment does not cost
    /// a second trie walk unless it could name a verb route.
    verbs: HashSet<Box<str>>,
}

#[derive(Debug, Clone, Default)]
struct Node {
    literals: Literals,
    single: Option<NodeId>,
    multi: Option<NodeId>,
    /// Routes ending here without a verb, as (method, route).
    plain: Ends,
    /// Routes ending here with a verb, as verb -> (method, route); boxed,
    /// since few nodes have any.
    #[expect(
        clippy::box_collection,
        reason = "a None is one word where an empty map is six"
    )]
    verbs: Option<Box<HashMap<Box<str>, Ends>>>,
}

impl Node {
    fn is_leaf(&self) -> bool {
        self.literals.is_empty() && self.single.is_none() && self.multi.is_none()
    }

    fn verb_routes(&self, verb: &str) -> Option<&Ends> {
        self.verbs.as_ref()?.get(verb)
    }
}

/// A route's HTTP method: the standard ones borrowed, so a table of
/// thousands of routes holds no copy of "GET" per route.
type Method = Cow<'static, str>;

/// The routes ending at a node, as (method, route).
type Ends = Box<[(Method, RouteId)]>;

/// Appends to an exact-size slice. A node's lists are short and built once
/// (a path rarely has more than one method, most nodes one child), so a
/// reallocation per entry costs less than a `Vec`'s spare room per node.
fn push_exact<T>(list: &mut Box<[T]>, item: T) {
    let mut grown = std::mem::take(list).into_vec();
    grown.reserve_exact(1);
    grown.push(item);
    *list = grown.into_boxed_slice();
}

fn method_name(method: &str) -> Method {
    match crate::telemetry::metrics::known_method(method) {
        Some(m) => Cow::Borrowed(m),
        None => Cow::Owned(method.to_owned()),
    }
}

/// A node's literal children; see [`FEW_LITERALS`].
#[derive(Debug, Clone)]
enum Literals {
    Few(Box<[(Box<str>, NodeId)]>),
    #[expect(
        clippy::box_collection,
        reason = "boxed, the enum is the size of the list, not of a map"
    )]
    Many(Box<HashMap<Box<str>, NodeId>>),
}

impl Default for Literals {
    fn default() -> Self {
        Literals::Few(Box::default())
    }
}

impl Literals {
    fn is_empty(&self) -> bool {
        match self {
            Literals::Few(list) => list.is_empty(),
            Literals::Many(map) => map.is_empty(),
        }
    }

    fn get(&self, segment: &str) -> Option<NodeId> {
        match self {
            Literals::Few(list) => list.iter().find(|(k, _)| &**k == segment).map(|e| e.1),
            Literals::Many(map) => map.get(segment).copied(),
        }
    }

    fn insert(&mut self, segment: &str, id: NodeId) {
        match self {
            Literals::Few(list) if list.len() < FEW_LITERALS => {
                push_exact(list, (segment.into(), id));
            }
            Literals::Few(list) => {
                let mut map: HashMap<Box<str>, NodeId> =
                    std::mem::take(list).into_vec().into_iter().collect();
                map.insert(segment.into(), id);
                *self = Literals::Many(Box::new(map));
            }
            Literals::Many(map) => {
                map.insert(segment.into(), id);
            }
        }
    }

    fn shrink_to_fit(&mut self) {
        if let Literals::Many(map) = self {
            map.shrink_to_fit();
        }
    }
}

#[derive(Debug, Clone)]
struct Route<T> {
    /// Kept to re-match the winning template of a route with variables
    /// and find their boundaries; the trie walk itself records nothing, so
    /// literal-only lookups never allocate. Shared with the template.
    segments: std::sync::Arc<[Segment]>,
    vars: Box<[VarSpec]>,
    value: T,
}

#[derive(Debug, Clone)]
struct VarSpec {
    start: usize,
    end: usize,
    /// Multi-segment variables keep `%2F` escaped (google/api/http.proto).
    keep_slash: bool,
    name: Box<str>,
}

/// Returned by [`Matcher::insert`] when the method already has a route of
/// the same shape; carries both payloads so the caller can name both routes.
#[derive(Debug)]
pub struct Conflict<'a, T> {
    /// The payload registered first.
    pub existing: &'a T,
    /// The payload that was not inserted, handed back to the caller.
    pub rejected: T,
}

impl<T> fmt::Display for Conflict<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a route with the same method, path shape and verb is already registered")
    }
}

impl<T: fmt::Debug> std::error::Error for Conflict<'_, T> {}

/// Outcome of [`Matcher::lookup`], one variant per HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<'a, T> {
    /// A route matched.
    Found {
        /// The route's payload.
        value: &'a T,
        /// Decoded variable values, in `Template::variables` order; borrowed
        /// from the path when no decoding was needed.
        vars: Vec<Cow<'a, str>>,
    },
    /// The path matches only routes of other methods (405); `allowed` is
    /// sorted and deduplicated, ready for an `Allow` header.
    MethodNotAllowed {
        /// Methods with a route matching the path.
        allowed: Vec<&'a str>,
    },
    /// No route matches the path under any method (404).
    NotFound,
    /// The path matched but cannot be served as given (400).
    BadPath(PathError),
}

/// Why a request path was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/` (e.g. `*` or an authority form).
    #[error("request path must start with '/'")]
    NotAbsolute,
    /// A variable's text has a bad escape or decodes to invalid UTF-8.
    /// Positions in `source` are byte offsets into the whole request path.
    #[error("path variable {field:?}: {source}")]
    Variable {
        /// Dotted field path of the variable.
        field: String,
        /// What was wrong with its text.
        source: EscapeError,
    },
    /// Matching needed more backtracking than the step budget allows.
    #[error("request path is too ambiguous to match")]
    TooComplex,
}

#[derive(Debug)]
struct Exhausted;

impl<T> Default for Matcher<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for Matcher<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Matcher")
            .field("routes", &self.routes.len())
            .field("nodes", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

impl<T> Matcher<T> {
    /// An empty table.
    pub fn new() -> Self {
        Matcher {
            nodes: vec![Node::default()],
            routes: Vec::new(),
            verbs: HashSet::new(),
        }
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether no route has been inserted.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Payloads in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.routes.iter().map(|route| &route.value)
    }

    /// Adds a route.
    ///
    /// Two templates with the same literals, `*`/`**` in the same places and
    /// the same verb would always match the same requests, so for one method
    /// the second is refused; variable names do not change the shape.
    pub fn insert(
        &mut self,
        method: &str,
        template: &Template,
        value: T,
    ) -> Result<(), Conflict<'_, T>> {
        let mut node = 0;
        for segment in template.segments.iter() {
            node = self.child(node, segment);
        }
        let verb = template.verb.as_deref();
        let existing = match verb {
            None => Some(&self.nodes[node as usize].plain),
            Some(verb) => self.nodes[node as usize].verb_routes(verb),
        }
        .and_then(|list| list.iter().find(|(m, _)| &**m == method))
        .map(|&(_, id)| id);
        if let Some(id) = existing {
            return Err(Conflict {
                existing: &self.routes[id].value,
                rejected: value,
            });
        }

        let id = self.routes.len();
        let entry = (method_name(method), id);
        let node = &mut self.nodes[node as usize];
        match verb {
            None => push_exact(&mut node.plain, entry),
            Some(verb) => {
                push_exact(
                    node.verbs
                        .get_or_insert_default()
                        .entry(verb.into())
                        .or_default(),
                    entry,
                );
                self.verbs.insert(verb.into());
            }
        }
        let len = template.segments.len();
        let vars: Box<[VarSpec]> = template
            .variables
            .iter()
            .map(|v| {
                // Clamped so a hand-built template cannot make lookups panic.
                let end = v.end.min(len);
                let start = v.start.min(end);
                let body = &template.segments[start..end];
                VarSpec {
                    start,
                    end,
                    keep_slash: !(body.len() == 1 && body[0] != Segment::Multi),
                    name: v.name().into(),
                }
            })
            .collect();
        self.routes.push(Route {
            segments: template.segments.clone(),
            vars,
            value,
        });
        Ok(())
    }

    /// Gives back the memory growing the table left spare; for a table
    /// built once and then only read.
    pub fn shrink_to_fit(&mut self) {
        self.nodes.shrink_to_fit();
        self.routes.shrink_to_fit();
        for node in &mut self.nodes {
            node.literals.shrink_to_fit();
        }
    }

    fn child(&mut self, node: NodeId, segment: &Segment) -> NodeId {
        let next = NodeId::try_from(self.nodes.len()).expect("fewer than 2^32 trie nodes");
        let node = &mut self.nodes[node as usize];
        let slot = match segment {
            Segment::Literal(text) => {
                if let Some(id) = node.literals.get(text) {
                    return id;
                }
                node.literals.insert(text, next);
                self.nodes.push(Node::default());
                return next;
            }
            Segment::Single => &mut node.single,
            Segment::Multi => &mut node.multi,
        };
        match *slot {
            Some(id) => id,
            None => {
                *slot = Some(next);
                self.nodes.push(Node::default());
                next
            }
        }
    }

    /// Finds the route for `method` and `path` (the raw path, without the
    /// query string) and decodes its variables.
    pub fn lookup<'a>(&'a self, method: &str, path: &'a str) -> Lookup<'a, T> {
        if !path.starts_with('/') {
            return Lookup::BadPath(PathError::NotAbsolute);
        }
        let split = self.split_verb(path);
        let verb = split.as_ref().map(|(end, verb)| (*end, &**verb));
        let mut found = match Search::new(&self.nodes, path, Some(method)).run(verb) {
            Ok(found) => found,
            Err(Exhausted) => return Lookup::BadPath(PathError::TooComplex),
        };
        // HEAD is the GET without its body (RFC 9110 section 9.3.2) where
        // no route claims HEAD itself; the caller leaves the body out.
        if found.is_none() && method == "HEAD" {
            found = match Search::new(&self.nodes, path, Some("GET")).run(verb) {
                Ok(found) => found,
                Err(Exhausted) => return Lookup::BadPath(PathError::TooComplex),
            };
        }
        if let Some((id, end)) = found {
            return self.found(id, path, end);
        }
        match self.collect(path) {
            Err(Exhausted) => Lookup::BadPath(PathError::TooComplex),
            Ok(allowed) if allowed.is_empty() => Lookup::NotFound,
            Ok(mut allowed) => {
                // What the request could have used, HEAD included.
                if allowed.contains(&"GET") && !allowed.contains(&"HEAD") {
                    let at = allowed.partition_point(|m| *m < "HEAD");
                    allowed.insert(at, "HEAD");
                }
                Lookup::MethodNotAllowed { allowed }
            }
        }
    }

    /// Methods (sorted, deduplicated) having a route that matches `path`,
    /// for CORS preflight answers. (A 405's `Allow` adds HEAD where GET is
    /// there, see [`lookup`](Self::lookup); a preflight never asks for
    /// HEAD, a CORS-safelisted method.)
    pub fn allowed_methods(&self, path: &str) -> Vec<&str> {
        if !path.starts_with('/') {
            return Vec::new();
        }
        self.collect(path).unwrap_or_default()
    }

    fn collect(&self, path: &str) -> Result<Vec<&str>, Exhausted> {
        let split = self.split_verb(path);
        let mut search = Search::new(&self.nodes, path, None);
        search.run(split.as_ref().map(|(end, verb)| (*end, &**verb)))?;
        let mut allowed = search.allowed;
        allowed.sort_unstable();
        allowed.dedup();
        Ok(allowed)
    }

    /// If the final segment has a `:` and the text after the last one is a
    /// verb some route uses, returns where the segments end and the verb.
    fn split_verb<'p>(&self, path: &'p str) -> Option<(usize, Cow<'p, str>)> {
        if self.verbs.is_empty() {
            return None;
        }
        let last = path.rfind('/').map_or(0, |i| i + 1);
        let colon = last + path[last..].rfind(':')?;
        let verb = escape::decode(&path[colon + 1..], false).ok()?;
        self.verbs.contains(&*verb).then_some((colon, verb))
    }

    fn found<'a>(&'a self, id: RouteId, path: &'a str, end: usize) -> Lookup<'a, T> {
        let route = &self.routes[id];
        if route.vars.is_empty() {
            return Lookup::Found {
                value: &route.value,
                vars: Vec::new(),
            };
        }
        let mut capture = Capture {
            segments: &route.segments,
            vars: &route.vars,
            path,
            end,
            out: vec![Cow::Borrowed(&path[..0]); route.vars.len()],
            budget: STEP_BUDGET,
        };
        match capture.run(0, Some(1), 1, 0, None) {
            Ok(true) => {}
            // The trie walk already matched this template the same way.
            Ok(false) => return Lookup::NotFound,
            Err(Exhausted) => return Lookup::BadPath(PathError::TooComplex),
        }
        let mut vars = capture.out;
        for (value, spec) in vars.iter_mut().zip(route.vars.iter()) {
            let Cow::Borrowed(raw) = *value else { continue };
            // `raw` is a slice of `path`, so errors can point into the path.
            let offset = (raw.as_ptr() as usize).wrapping_sub(path.as_ptr() as usize);
            match escape::decode_at(raw, spec.keep_slash, offset) {
                Ok(decoded) => *value = decoded,
                Err(source) => {
                    return Lookup::BadPath(PathError::Variable {
                        field: spec.name.to_string(),
                        source,
                    })
                }
            }
        }
        Lookup::Found {
            value: &route.value,
            vars,
        }
    }
}

/// The segment starting at byte `start` of `path[..end]`, and where the next
/// one starts (`None` after the last). Segments are walked in place so that
/// matching needs no per-request segment list.
fn next_segment(path: &str, end: usize, start: usize) -> (&str, Option<usize>) {
    let rest = &path[start..end];
    match rest.find('/') {
        Some(i) => (&rest[..i], Some(start + i + 1)),
        None => (rest, None),
    }
}

/// Whether every segment of `path[start..end]` is non-empty, i.e. whether a
/// trailing `**` can take them all.
fn all_non_empty(path: &str, end: usize, start: usize) -> bool {
    path[start..end]
        .split('/')
        .all(|segment| !segment.is_empty())
}

fn literal_matches(segment: &str, literal: &str) -> bool {
    if segment.contains('%') {
        escape::decode(segment, false).is_ok_and(|decoded| decoded == literal)
    } else {
        segment == literal
    }
}

/// One depth-first walk of the trie.
struct Search<'m, 'q> {
    nodes: &'m [Node],
    path: &'q str,
    end: usize,
    verb: Option<&'q str>,
    /// `Some`: stop at the first route of this method. `None`: visit every
    /// match and gather its methods into `allowed`.
    method: Option<&'q str>,
    allowed: Vec<&'m str>,
    budget: usize,
}

impl<'m, 'q> Search<'m, 'q> {
    fn new(nodes: &'m [Node], path: &'q str, method: Option<&'q str>) -> Self {
        Search {
            nodes,
            path,
            end: path.len(),
            verb: None,
            method,
            allowed: Vec::new(),
            budget: STEP_BUDGET,
        }
    }

    /// Tries the verb split first (if any), then the whole path, returning
    /// the route and where its segments end.
    fn run(
        &mut self,
        split: Option<(usize, &'q str)>,
    ) -> Result<Option<(RouteId, usize)>, Exhausted> {
        let passes = split
            .map(|(end, verb)| (end, Some(verb)))
            .into_iter()
            .chain([(self.path.len(), None)]);
        for (end, verb) in passes {
            self.end = end;
            self.verb = verb;
            if let Some(id) = self.visit(0, Some(1))? {
                return Ok(Some((id, end)));
            }
        }
        Ok(None)
    }

    fn terminal(&mut self, node: &'m Node) -> Option<RouteId> {
        let list = match self.verb {
            None => &node.plain,
            Some(verb) => node.verb_routes(verb)?,
        };
        match self.method {
            Some(method) => list.iter().find(|(m, _)| &**m == method).map(|&(_, id)| id),
            None => {
                self.allowed.extend(list.iter().map(|(m, _)| &**m));
                None
            }
        }
    }

    /// Recursion depth is bounded by template length: consuming segments
    /// for `**` loops instead of recursing, so a long path cannot overflow
    /// the stack.
    fn visit(&mut self, id: NodeId, cursor: Option<usize>) -> Result<Option<RouteId>, Exhausted> {
        self.budget = self.budget.checked_sub(1).ok_or(Exhausted)?;
        let node = &self.nodes[id as usize];
        let Some(start) = cursor else {
            if let Some(found) = self.terminal(node) {
                return Ok(Some(found));
            }
            return match node.multi {
                Some(child) => self.visit(child, None),
                None => Ok(None),
            };
        };
        let (segment, next) = next_segment(self.path, self.end, start);
        if !node.literals.is_empty() {
            let child = if segment.contains('%') {
                escape::decode(segment, false)
                    .ok()
                    .and_then(|decoded| node.literals.get(&decoded))
            } else {
                node.literals.get(segment)
            };
            if let Some(child) = child {
                if let Some(found) = self.visit(child, next)? {
                    return Ok(Some(found));
                }
            }
        }
        if let (Some(child), false) = (node.single, segment.is_empty()) {
            if let Some(found) = self.visit(child, next)? {
                return Ok(Some(found));
            }
        }
        if let Some(child) = node.multi {
            if self.nodes[child as usize].is_leaf() {
                // Only "take everything" can end at a leaf; skip the lazy
                // one-at-a-time walk for the common trailing `**`.
                if !all_non_empty(self.path, self.end, start) {
                    return Ok(None);
                }
                return self.visit(child, None);
            }
            if let Some(found) = self.visit(child, cursor)? {
                return Ok(Some(found));
            }
            let mut at = cursor;
            while let Some(start) = at {
                let (segment, next) = next_segment(self.path, self.end, start);
                if segment.is_empty() {
                    break;
                }
                if let Some(found) = self.visit(child, next)? {
                    return Ok(Some(found));
                }
                at = next;
            }
        }
        Ok(None)
    }
}

/// Re-matches one template against the path to find variable boundaries.
/// It tries alternatives in the same order as [`Search::visit`], so it
/// finds the same split of the path among `**` segments.
struct Capture<'r, 'a> {
    segments: &'r [Segment],
    vars: &'r [VarSpec],
    path: &'a str,
    end: usize,
    /// Raw variable text, decoded by the caller once the match succeeds.
    out: Vec<Cow<'a, str>>,
    budget: usize,
}

impl Capture<'_, '_> {
    /// `last_end` is where the last consumed segment ends, `consumed` how
    /// many were consumed, `open` the start offset and count when the
    /// currently open variable began.
    fn run(
        &mut self,
        i: usize,
        cursor: Option<usize>,
        last_end: usize,
        consumed: usize,
        mut open: Option<(usize, usize)>,
    ) -> Result<bool, Exhausted> {
        self.budget = self.budget.checked_sub(1).ok_or(Exhausted)?;
        for (k, var) in self.vars.iter().enumerate() {
            if var.end == i && var.start < i {
                if let Some((from, count)) = open.take() {
                    let to = if consumed > count { last_end } else { from };
                    self.out[k] = Cow::Borrowed(&self.path[from..to]);
                }
            }
        }
        for (k, var) in self.vars.iter().enumerate() {
            if var.start == i {
                let from = cursor.unwrap_or(self.end);
                if var.end == i {
                    self.out[k] = Cow::Borrowed(&self.path[from..from]);
                } else {
                    open = Some((from, consumed));
                }
            }
        }
        let Some(segment) = self.segments.get(i) else {
            return Ok(cursor.is_none());
        };
        match segment {
            Segment::Literal(_) | Segment::Single => {
                let Some(start) = cursor else {
                    return Ok(false);
                };
                let (text, next) = next_segment(self.path, self.end, start);
                let ok = match segment {
                    Segment::Literal(literal) => literal_matches(text, literal),
                    _ => !text.is_empty(),
                };
                if !ok {
                    return Ok(false);
                }
                self.run(i + 1, next, start + text.len(), consumed + 1, open)
            }
            Segment::Multi if i + 1 == self.segments.len() => match cursor {
                None => self.run(i + 1, None, last_end, consumed, open),
                Some(start) if all_non_empty(self.path, self.end, start) => {
                    self.run(i + 1, None, self.end, consumed + 1, open)
                }
                Some(_) => Ok(false),
            },
            Segment::Multi => {
                if self.run(i + 1, cursor, last_end, consumed, open)? {
                    return Ok(true);
                }
                let (mut at, mut count) = (cursor, consumed);
                while let Some(start) = at {
                    let (text, next) = next_segment(self.path, self.end, start);
                    if text.is_empty() {
                        break;
                    }
                    count += 1;
                    if self.run(i + 1, next, start + text.len(), count, open)? {
                        return Ok(true);
                    }
                    at = next;
                }
                Ok(false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A large table has about two nodes per route (issue 24): a map or
    /// a growable list inline in each would double its size.
    #[test]
    fn trie_nodes_stay_small() {
        assert!(
            std::mem::size_of::<Node>() <= 64,
            "{}",
            std::mem::size_of::<Node>()
        );
    }

    /// Builds a matcher whose payload is the route's index in `routes`.
    fn matcher(routes: &[(&str, &str)]) -> Matcher<usize> {
        let mut m = Matcher::new();
        for (i, (method, template)) in routes.iter().enumerate() {
            let t = Template::parse(template).unwrap();
            assert!(m.insert(method, &t, i).is_ok(), "{method} {template}");
        }
        m
    }

    /// Lookup reduced to something comparable: Ok((route, vars)) or the
    /// non-found outcome rendered as text.
    fn outcome(
        m: &Matcher<usize>,
        method: &str,
        path: &str,
    ) -> Result<(usize, Vec<String>), String> {
        match m.lookup(method, path) {
            Lookup::Found { value, vars } => {
                Ok((*value, vars.into_iter().map(Cow::into_owned).collect()))
            }
            Lookup::MethodNotAllowed { allowed } => Err(format!("405 {}", allowed.join(","))),
            Lookup::NotFound => Err("404".into()),
            Lookup::BadPath(e) => Err(format!("400 {e}")),
        }
    }

    fn ok(route: usize, vars: &[&str]) -> Result<(usize, Vec<String>), String> {
        Ok((route, vars.iter().map(|s| s.to_string()).collect()))
    }

    fn err(s: &str) -> Result<(usize, Vec<String>), String> {
        Err(s.to_owned())
    }

    type Case<'s> = (&'s str, &'s str, Result<(usize, Vec<String>), String>);

    fn check(m: &Matcher<usize>, cases: &[Case<'_>]) {
        for (method, path, want) in cases {
            assert_eq!(&outcome(m, method, path), want, "{method} {path}");
        }
    }

    /// A node keeps a list of its literal children up to FEW_LITERALS and
    /// a map past it; lookups, escaped segments, 405s and custom methods
    /// answer the same on both sides of the switch and after shrinking.
    #[test]
    fn many_literal_children_match_as_few_do() {
        let names: Vec<String> = (0..3 * FEW_LITERALS).map(|i| format!("n {i}")).collect();
        let mut routes: Vec<(&str, String)> = names
            .iter()
            .map(|n| ("GET", format!("/v1/{}/{{id}}", n.replace(' ', "%20"))))
            .collect();
        routes.push(("PURGE", "/v1/n%200/{id}".to_owned()));
        let mut m = matcher(
            &routes
                .iter()
                .map(|(method, t)| (*method, t.as_str()))
                .collect::<Vec<_>>(),
        );
        m.shrink_to_fit();
        for (i, n) in names.iter().enumerate() {
            let path = format!("/v1/{}/7", n.replace(' ', "%20"));
            check(&m, &[("GET", &path, ok(i, &["7"]))]);
        }
        let purge = names.len();
        check(
            &m,
            &[
                ("PURGE", "/v1/n%200/8", ok(purge, &["8"])),
                ("DELETE", "/v1/n%200/8", err("405 GET,HEAD,PURGE")),
                ("GET", "/v1/n 99/8", err("404")),
            ],
        );
    }

    #[test]
    fn literal_beats_single_beats_multi() {
        let m = matcher(&[
            ("GET", "/v1/{rest=**}"),
            ("GET", "/v1/books/{id}"),
            ("GET", "/v1/books/special"),
            ("GET", "/v1/*/special"),
        ]);
        check(
            &m,
            &[
                ("GET", "/v1/books/special", ok(2, &[])),
                ("GET", "/v1/books/7", ok(1, &["7"])),
                ("GET", "/v1/shelves/special", ok(3, &[])),
                ("GET", "/v1/books/7/pages", ok(0, &["books/7/pages"])),
                ("GET", "/v1/books", ok(0, &["books"])),
                ("GET", "/v1", ok(0, &[""])),
            ],
        );
    }

    #[test]
    fn falls_back_to_lower_priority_route_of_the_requested_method() {
        let m = matcher(&[("POST", "/v1/users/me"), ("GET", "/v1/users/{id}")]);
        check(
            &m,
            &[
                ("GET", "/v1/users/me", ok(1, &["me"])),
                ("POST", "/v1/users/me", ok(0, &[])),
                ("POST", "/v1/users/you", err("405 GET,HEAD")),
            ],
        );
    }

    #[test]
    fn multi_at_end_takes_zero_or_more_non_empty_segments() {
        let m = matcher(&[("GET", "/files/{path=**}")]);
        check(
            &m,
            &[
                ("GET", "/files", ok(0, &[""])),
                ("GET", "/files/a", ok(0, &["a"])),
                ("GET", "/files/a/b/c.txt", ok(0, &["a/b/c.txt"])),
                ("GET", "/files/", err("404")),
                ("GET", "/files/a//b", err("404")),
                ("GET", "/files/a/", err("404")),
                ("GET", "/other/a", err("404")),
            ],
        );
    }

    #[test]
    fn multi_mid_path_backtracks_lazily() {
        let m = matcher(&[
            ("GET", "/v1/{prefix=**}/meta"),
            ("GET", "/w/**/x/{id}"),
            ("GET", "/{a=**}/x/{b=**}"),
        ]);
        check(
            &m,
            &[
                ("GET", "/v1/meta", ok(0, &[""])),
                ("GET", "/v1/a/b/meta", ok(0, &["a/b"])),
                ("GET", "/v1/a/meta/meta", ok(0, &["a/meta"])),
                ("GET", "/w/x/1", ok(1, &["1"])),
                ("GET", "/w/p/q/x/1", ok(1, &["1"])),
                ("GET", "/w/p/x/x/x", ok(1, &["x"])),
                ("GET", "/x/x/x", ok(2, &["", "x/x"])),
                ("GET", "/p/q/x", ok(2, &["p/q", ""])),
                ("GET", "/p/q", err("404")),
            ],
        );
        let m = matcher(&[("GET", "/w/**/x/{id}")]);
        assert_eq!(outcome(&m, "GET", "/w/p/x/x/x"), ok(0, &["x"]));
    }

    #[test]
    fn binds_nested_resource_names_and_dotted_field_paths() {
        let m = matcher(&[
            ("GET", "/v1/{name=shelves/*/books/*}"),
            ("PATCH", "/v1/{book.name=shelves/*/books/*}"),
            ("GET", "/v2/{name=shelves/*}/books/{book}"),
            ("GET", "/v3/{a.b.c}"),
            ("GET", "/v4/{name=only}/x"),
        ]);
        check(
            &m,
            &[
                (
                    "GET",
                    "/v1/shelves/s1/books/b2",
                    ok(0, &["shelves/s1/books/b2"]),
                ),
                (
                    "PATCH",
                    "/v1/shelves/s1/books/b2",
                    ok(1, &["shelves/s1/books/b2"]),
                ),
                ("GET", "/v1/shelves/s1/books", err("404")),
                ("GET", "/v1/shelves/s1/books/b2/x", err("404")),
                ("GET", "/v1/shelvez/s1/books/b2", err("404")),
                ("GET", "/v2/shelves/1/books/2", ok(2, &["shelves/1", "2"])),
                ("GET", "/v3/abc", ok(3, &["abc"])),
                ("GET", "/v4/only/x", ok(4, &["only"])),
            ],
        );
    }

    #[test]
    fn verb_routes_are_tried_before_the_whole_segment() {
        let m = matcher(&[
            ("POST", "/v1/books/{id}:publish"),
            ("GET", "/v1/books/{id}"),
            ("POST", "/v1/{name=**}:download"),
            ("POST", "/v1/x:do%20it"),
            ("GET", "/v1/x:batchGet"),
        ]);
        check(
            &m,
            &[
                ("POST", "/v1/books/1:publish", ok(0, &["1"])),
                ("POST", "/v1/books/a:b:publish", ok(0, &["a:b"])),
                ("GET", "/v1/books/1", ok(1, &["1"])),
                ("GET", "/v1/books/1:publish", ok(1, &["1:publish"])),
                ("GET", "/v1/books/1:unknown", ok(1, &["1:unknown"])),
                ("POST", "/v1/books/1", err("405 GET,HEAD")),
                ("POST", "/v1/books/:publish", err("405 GET,HEAD")),
                ("POST", "/v1/a/b:download", ok(2, &["a/b"])),
                ("POST", "/v1/x:do%20it", ok(3, &[])),
                ("GET", "/v1/x:batchGet", ok(4, &[])),
                ("GET", "/v1/x", err("404")),
            ],
        );
    }

    #[test]
    fn same_shape_conflicts_regardless_of_variable_names() {
        let conflicting = [
            ("/v1/{a}", "/v1/{b}"),
            ("/v1/{a}", "/v1/*"),
            ("/v1/{a=x/*}", "/v1/x/{b}"),
            ("/v1/{a=**}:go", "/v1/**:go"),
            ("/v1/{a.b}/{c}", "/v1/{c}/{a.b}"),
        ];
        for (first, second) in conflicting {
            let mut m = Matcher::new();
            m.insert("GET", &Template::parse(first).unwrap(), "first")
                .unwrap();
            let err = m
                .insert("GET", &Template::parse(second).unwrap(), "second")
                .expect_err(second);
            assert_eq!((*err.existing, err.rejected), ("first", "second"));
            assert_eq!(m.len(), 1);
        }
    }

    #[test]
    fn different_verb_method_or_shape_does_not_conflict() {
        let m = matcher(&[
            ("GET", "/v1/{a}"),
            ("POST", "/v1/{a}"),
            ("GET", "/v1/{a}:x"),
            ("GET", "/v1/{a}:y"),
            ("GET", "/v1/{a=**}"),
            ("GET", "/v1/lit"),
            ("get", "/v1/{a}"),
        ]);
        assert_eq!(m.len(), 7);
    }

    #[test]
    fn conflict_error_displays_reason() {
        let mut m = Matcher::new();
        let t = Template::parse("/a").unwrap();
        m.insert("GET", &t, 1).unwrap();
        let err = m.insert("GET", &t, 2).unwrap_err();
        assert!(err.to_string().contains("already registered"), "{err}");
    }

    #[test]
    fn head_takes_its_own_route_first_then_the_get() {
        let m = matcher(&[
            ("GET", "/v1/things/{id}"),
            ("HEAD", "/v1/things/{id}"),
            ("GET", "/v1/other/{id}"),
        ]);
        check(
            &m,
            &[
                ("HEAD", "/v1/things/1", ok(1, &["1"])),
                ("HEAD", "/v1/other/2", ok(2, &["2"])),
                ("POST", "/v1/things/1", err("405 GET,HEAD")),
            ],
        );
    }

    #[test]
    fn distinguishes_method_not_allowed_from_not_found() {
        let m = matcher(&[
            ("GET", "/v1/books/{id}"),
            ("DELETE", "/v1/books/{id}"),
            ("POST", "/v1/books/{id}:publish"),
            ("LIST", "/v1/books"),
        ]);
        check(
            &m,
            &[
                ("PUT", "/v1/books/1", err("405 DELETE,GET,HEAD")),
                ("get", "/v1/books/1", err("405 DELETE,GET,HEAD")),
                (
                    "PUT",
                    "/v1/books/1:publish",
                    err("405 DELETE,GET,HEAD,POST"),
                ),
                ("HEAD", "/v1/books/1", ok(0, &["1"])),
                ("HEAD", "/v1/books", err("405 LIST")),
                ("LIST", "/v1/books", ok(3, &[])),
                ("GET", "/v1/books", err("405 LIST")),
                ("GET", "/v2/books/1", err("404")),
                ("GET", "/v1/books/1/x", err("404")),
            ],
        );
        assert_eq!(m.allowed_methods("/v1/books/1"), ["DELETE", "GET"]);
        assert_eq!(
            m.allowed_methods("/v1/books/1:publish"),
            ["DELETE", "GET", "POST"]
        );
        assert!(m.allowed_methods("/nope").is_empty());
        assert!(m.allowed_methods("nope").is_empty());
    }

    #[test]
    fn single_segment_variables_decode_slash_but_multi_segment_keep_it() {
        let m = matcher(&[
            ("GET", "/a/{name}"),
            ("GET", "/b/{name=**}"),
            ("GET", "/c/{name=shelves/*}"),
            ("GET", "/d/{name=x}"),
        ]);
        check(
            &m,
            &[
                ("GET", "/a/x%2Fy", ok(0, &["x/y"])),
                ("GET", "/a/x%2fy%20z", ok(0, &["x/y z"])),
                ("GET", "/b/x%2Fy/z%20w", ok(1, &["x%2Fy/z w"])),
                ("GET", "/b/x%2fy", ok(1, &["x%2fy"])),
                ("GET", "/c/shelves/a%2Fb", ok(2, &["shelves/a%2Fb"])),
                ("GET", "/c/shelves/caf%C3%A9", ok(2, &["shelves/café"])),
                ("GET", "/d/x", ok(3, &["x"])),
                ("GET", "/d/%78", ok(3, &["x"])),
            ],
        );
    }

    #[test]
    fn bad_escapes_in_variables_are_bad_paths_pointing_into_the_path() {
        let m = matcher(&[("GET", "/v1/{name}"), ("GET", "/v2/{name=shelves/*}")]);
        check(
            &m,
            &[
                (
                    "GET",
                    "/v1/%zz",
                    err("400 path variable \"name\": bad percent-escape \"%zz\" at byte 4"),
                ),
                (
                    "GET",
                    "/v1/ab%4",
                    err("400 path variable \"name\": bad percent-escape \"%4\" at byte 6"),
                ),
                (
                    "GET",
                    "/v1/%FF",
                    err("400 path variable \"name\": percent-decoded value is not valid UTF-8"),
                ),
                (
                    "GET",
                    "/v2/shelves/%",
                    err("400 path variable \"name\": bad percent-escape \"%\" at byte 12"),
                ),
            ],
        );
        match m.lookup("GET", "/v1/%zz") {
            Lookup::BadPath(PathError::Variable { field, source }) => {
                assert_eq!(field, "name");
                assert_eq!(
                    source,
                    EscapeError::BadEscape {
                        position: 4,
                        escape: "%zz".into()
                    }
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn literal_segments_compare_percent_decoded() {
        let m = matcher(&[
            ("GET", "/v1/caf%C3%A9"),
            ("GET", "/v1/a%2Fb"),
            ("GET", "/v1/plain"),
        ]);
        check(
            &m,
            &[
                ("GET", "/v1/caf%C3%A9", ok(0, &[])),
                ("GET", "/v1/caf%c3%a9", ok(0, &[])),
                ("GET", "/v1/a%2fb", ok(1, &[])),
                ("GET", "/v1/a/b", err("404")),
                ("GET", "/v1/pl%61in", ok(2, &[])),
                ("GET", "/v1/%zz", err("404")),
            ],
        );
    }

    #[test]
    fn empty_segments_match_only_empty_literals() {
        let m = matcher(&[
            ("GET", "/"),
            ("GET", "/v1/x/{id}"),
            ("GET", "/v1/y/*/z"),
            ("GET", "/v1/m/**"),
        ]);
        check(
            &m,
            &[
                ("GET", "/", ok(0, &[])),
                ("GET", "/v1/x/", err("404")),
                ("GET", "/v1/x/1", ok(1, &["1"])),
                ("GET", "/v1/y//z", err("404")),
                ("GET", "/v1/m", ok(3, &[])),
                ("GET", "/v1/m/", err("404")),
                ("GET", "//", err("404")),
            ],
        );
    }

    #[test]
    fn rejects_paths_not_starting_with_slash() {
        let m = matcher(&[("GET", "/")]);
        assert_eq!(
            outcome(&m, "GET", "*"),
            err("400 request path must start with '/'")
        );
        assert_eq!(
            outcome(&m, "GET", ""),
            err("400 request path must start with '/'")
        );
    }

    #[test]
    fn unescaped_variables_borrow_from_the_path() {
        let m = matcher(&[("GET", "/v1/{a}/{b=**}")]);
        let Lookup::Found { vars, .. } = m.lookup("GET", "/v1/x/y/z") else {
            panic!("no match");
        };
        assert!(vars.iter().all(|v| matches!(v, Cow::Borrowed(_))));
        assert_eq!(vars, ["x", "y/z"]);
    }

    #[test]
    fn long_path_against_trailing_multi_stays_within_budget() {
        let m = matcher(&[
            ("GET", "/files/{path=**}"),
            ("GET", "/files/{path=**}/meta"),
        ]);
        let rest = vec!["a"; 30_000].join("/");
        let path = format!("/files/{rest}");
        assert_eq!(outcome(&m, "GET", &path), ok(0, &[&rest]));
        assert_eq!(outcome(&m, "GET", &format!("{path}/meta")), ok(1, &[&rest]));
    }

    #[test]
    fn hostile_path_against_many_multis_terminates() {
        let m = matcher(&[("GET", "/{a=**}/x/{b=**}/x/{c=**}/x/{d=**}/z")]);
        let path = format!("/{}", vec!["x"; 3_000].join("/"));
        let result = m.lookup("GET", &path);
        assert!(
            matches!(
                result,
                Lookup::NotFound | Lookup::BadPath(PathError::TooComplex)
            ),
            "{result:?}"
        );
    }

    #[test]
    fn ten_thousand_routes_each_match_their_own_payload() {
        let mut m = Matcher::new();
        let mut expected = Vec::new();
        for i in 0..10_000 {
            let (method, template, path, vars): (&str, String, String, Vec<String>) = match i % 4 {
                0 => (
                    "GET",
                    format!("/v{i}/items/{{id}}"),
                    format!("/v{i}/items/it{i}"),
                    vec![format!("it{i}")],
                ),
                1 => (
                    "POST",
                    format!("/svc{i}/{{name=**}}:run"),
                    format!("/svc{i}/a/b{i}:run"),
                    vec![format!("a/b{i}")],
                ),
                2 => (
                    "PUT",
                    format!("/p/{{x}}/q{i}"),
                    format!("/p/{i}/q{i}"),
                    vec![i.to_string()],
                ),
                _ => (
                    "DELETE",
                    format!("/lit/{i}/end"),
                    format!("/lit/{i}/end"),
                    vec![],
                ),
            };
            m.insert(method, &Template::parse(&template).unwrap(), i)
                .unwrap();
            expected.push((method, path, vars));
        }
        assert_eq!(m.len(), 10_000);
        assert_eq!(m.iter().count(), 10_000);
        for (i, (method, path, vars)) in expected.iter().enumerate() {
            let vars: Vec<&str> = vars.iter().map(String::as_str).collect();
            assert_eq!(outcome(&m, method, path), ok(i, &vars), "{method} {path}");
        }
        assert_eq!(outcome(&m, "GET", "/v1/items"), err("404"));
        assert_eq!(outcome(&m, "GET", "/p/2/q2"), err("405 PUT"));
    }

    #[test]
    fn new_matcher_is_empty() {
        let m: Matcher<()> = Matcher::default();
        assert!(m.is_empty());
        assert_eq!(m.len(), 0);
        assert_eq!(m.lookup("GET", "/"), Lookup::NotFound);
        assert!(format!("{m:?}").contains("Matcher"));
    }
}
