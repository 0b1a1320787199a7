//! One OpenAPI path item per URL shape, with one parameter name per position.
//!
//! The route table decides by shape: two templates with the same literals,
//! the same `*`/`**` in the same places and the same verb match the same
//! requests, whatever their variables are called (`{book}` and `{book.id}`),
//! and a 405's `Allow` lists every method of that shape. OpenAPI 3.1 forbids
//! two path items that differ only in parameter names, so routes are grouped
//! by the matcher's shape and each group becomes one path item whose
//! operations all use the same parameter names.
//!
//! Naming rule, per position: the field path a route binds there, joined
//! with `_` (`book.id` -> `book_id`: proto field names are identifiers, so
//! the result is one too, with no dot for generators to trip on). When the
//! routes of a shape bind different fields at one position, the name used by
//! most of them wins, then the shorter, then the first in alphabetical
//! order; each operation's parameter says which field it sets. A position no
//! route binds alone is `wildcardN`, or `<variable>_N` inside a variable
//! spanning several segments. A name already taken in the path gets `_2`.
//!
//! Variables spanning several segments (`{name=shelves/*/books/*}`) stay one
//! parameter when every route of the shape has the same variable bounds;
//! when they differ (`{name=shelves/*/books/*}` beside
//! `shelves/{shelf}/books/{book}`), each `*` and `**` becomes its own
//! parameter, since one path item must serve them all.

use std::collections::HashMap;

use crate::routing::{Segment, Template};
use crate::snapshot::Route;

/// The matcher's notion of a shape: segments (variables expanded) and verb.
type ShapeKey = (std::sync::Arc<[Segment]>, Option<Box<str>>);

/// Routes sharing one shape, in route-table order.
pub struct Group<'a> {
    pub routes: Vec<&'a Route>,
    pub layout: Layout,
}

/// How a shape is written as an OpenAPI path.
pub struct Layout {
    pub pieces: Vec<Piece>,
    /// Parameter positions, in path order.
    pub slots: Vec<Slot>,
    pub verb: Option<String>,
}

pub enum Piece {
    Literal(String),
    /// Index into [`Layout::slots`].
    Param(usize),
}

/// One path parameter position.
pub struct Slot {
    pub name: String,
    /// Template segment range it covers.
    pub start: usize,
    pub end: usize,
}

/// What one route binds at one slot.
pub enum Binding {
    /// The route's variable `index` covers exactly this slot.
    Field(usize),
    /// The slot is one wildcard inside the route's variable `index`.
    Part(usize),
    /// A wildcard outside every variable.
    Unbound,
}

/// Groups `routes` by shape, keeping the first appearance order.
pub fn group(routes: &[std::sync::Arc<Route>]) -> Vec<Group<'_>> {
    let mut index: HashMap<ShapeKey, usize> = HashMap::new();
    let mut members: Vec<Vec<&Route>> = Vec::new();
    for r in routes {
        let key = (r.template.segments.clone(), r.template.verb.clone());
        let i = *index.entry(key).or_insert_with(|| {
            members.push(Vec::new());
            members.len() - 1
        });
        members[i].push(r);
    }
    members
        .into_iter()
        .map(|routes| {
            let layout = layout(&routes);
            Group { routes, layout }
        })
        .collect()
}

fn spans(t: &Template) -> Vec<(usize, usize)> {
    t.variables.iter().map(|v| (v.start, v.end)).collect()
}

fn layout(routes: &[&Route]) -> Layout {
    let t = &routes[0].template;
    let first = spans(t);
    let coarse = routes.iter().all(|r| spans(&r.template) == first);
    let mut pieces = Vec::new();
    let mut slots = Vec::new();
    let mut i = 0;
    while i < t.segments.len() {
        let whole = coarse
            .then(|| first.iter().find(|(s, _)| *s == i).copied())
            .flatten();
        if let Some((start, end)) = whole {
            pieces.push(Piece::Param(slots.len()));
            slots.push(Slot {
                name: String::new(),
                start,
                end: end.max(start + 1),
            });
            i = end.max(i + 1);
            continue;
        }
        match &t.segments[i] {
            Segment::Literal(l) => pieces.push(Piece::Literal(l.to_string())),
            Segment::Single | Segment::Multi => {
                pieces.push(Piece::Param(slots.len()));
                slots.push(Slot {
                    name: String::new(),
                    start: i,
                    end: i + 1,
                });
            }
        }
        i += 1;
    }
    let mut layout = Layout {
        pieces,
        slots,
        verb: t.verb.as_deref().map(str::to_owned),
    };
    name_slots(&mut layout, routes);
    layout
}

/// What `route` binds at `slot`.
pub fn binding(route: &Route, slot: &Slot) -> Binding {
    let vars = &route.template.variables;
    if let Some(vi) = vars
        .iter()
        .position(|v| v.start == slot.start && v.end.max(v.start + 1) == slot.end)
    {
        return Binding::Field(vi);
    }
    match vars
        .iter()
        .position(|v| v.start <= slot.start && slot.end <= v.end)
    {
        Some(vi) => Binding::Part(vi),
        None => Binding::Unbound,
    }
}

/// The parameter name a route's variable proposes: its field path with `_`.
pub fn field_name(route: &Route, var: usize) -> String {
    route.template.variables[var].field_path.join("_")
}

fn name_slots(layout: &mut Layout, routes: &[&Route]) {
    let mut taken: Vec<String> = Vec::new();
    let mut wild = 0;
    for s in 0..layout.slots.len() {
        let slot = &layout.slots[s];
        let mut votes: Vec<(String, usize)> = Vec::new();
        let mut part_of: Option<(&Route, usize)> = None;
        for r in routes {
            match binding(r, slot) {
                Binding::Field(vi) => {
                    let name = field_name(r, vi);
                    match votes.iter_mut().find(|(n, _)| *n == name) {
                        Some((_, c)) => *c += 1,
                        None => votes.push((name, 1)),
                    }
                }
                Binding::Part(vi) => {
                    part_of.get_or_insert((r, vi));
                }
                Binding::Unbound => {}
            }
        }
        // Most used, then shortest, then alphabetical: stable whatever
        // order the routes come in.
        votes.sort_by(|(a, ca), (b, cb)| cb.cmp(ca).then(a.len().cmp(&b.len())).then(a.cmp(b)));
        let base = match (votes.into_iter().next(), part_of) {
            (Some((name, _)), _) => name,
            (None, Some((r, vi))) => {
                let v = &r.template.variables[vi];
                let k = (v.start..slot.start)
                    .filter(|&j| !matches!(r.template.segments[j], Segment::Literal(_)))
                    .count();
                format!("{}_{}", field_name(r, vi), k + 1)
            }
            (None, None) => {
                wild += 1;
                format!("wildcard{wild}")
            }
        };
        let mut name = base.clone();
        let mut n = 1;
        while taken.contains(&name) {
            n += 1;
            name = format!("{base}_{n}");
        }
        taken.push(name.clone());
        layout.slots[s].name = name;
    }
}

impl Layout {
    /// The OpenAPI path: `/v1/shelves/{shelf}/books/{book}:verb`.
    pub fn path(&self) -> String {
        let mut out = String::new();
        for p in &self.pieces {
            out.push('/');
            match p {
                Piece::Literal(l) => out.push_str(&percent_encode_segment(l)),
                Piece::Param(i) => {
                    out.push('{');
                    out.push_str(&self.slots[*i].name);
                    out.push('}');
                }
            }
        }
        if out.is_empty() {
            out.push('/');
        }
        if let Some(verb) = &self.verb {
            out.push(':');
            out.push_str(verb);
        }
        out
    }

    /// How a variable spanning several slots is assembled from them, e.g.
    /// `shelves/{shelf}/books/{book}`.
    pub fn spelled(&self, t: &Template, var: usize) -> String {
        let v = &t.variables[var];
        let mut parts = Vec::new();
        let mut i = v.start;
        while i < v.end {
            match self.slots.iter().find(|s| s.start == i) {
                Some(s) => {
                    parts.push(format!("{{{}}}", s.name));
                    i = s.end;
                }
                None => {
                    if let Segment::Literal(l) = &t.segments[i] {
                        parts.push(l.to_string());
                    }
                    i += 1;
                }
            }
        }
        parts.join("/")
    }
}

fn percent_encode_segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC)
        .to_string()
        .replace("%2D", "-")
        .replace("%2E", ".")
        .replace("%5F", "_")
        .replace("%7E", "~")
}
