//! The bundled example backend: `example.bookstore.v1.Bookstore` with
//! in-memory storage, served by `gateway demo` so a newcomer can curl a
//! route with nothing else installed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use prost_reflect::{
    DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor, ReflectMessage, Value,
};
use tonic::{Request, Response, Status};

use tokio_stream::StreamExt as _;

use super::dynamic::{BoxFuture, DynamicServer, MessageStream};

pub const SERVICE: &str = "example.bookstore.v1.Bookstore";

/// Fields of Book a client may change through UpdateBook.
const MUTABLE_BOOK_FIELDS: &[&str] = &["title", "author", "genre", "tags", "page_count"];

#[derive(Default)]
struct Store {
    shelves: BTreeMap<i64, DynamicMessage>,
    books: BTreeMap<(i64, i64), DynamicMessage>,
    next_shelf: i64,
    next_book: i64,
}

/// Builds the server over `pool`, which must contain the bookstore descriptors,
/// seeded with two shelves and three books.
pub fn server(pool: &DescriptorPool) -> DynamicServer {
    let store = Arc::new(Mutex::new(Store::default()));
    seed(pool, &store);
    let unary = store.clone();
    DynamicServer::new(
        pool,
        &[SERVICE],
        move |method: &MethodDescriptor, req: Request<DynamicMessage>| {
            let result = handle(&unary, method, req.into_inner());
            Box::pin(async move { result.map(Response::new) }) as BoxFuture<_>
        },
    )
    .with_streaming(
        move |method: &MethodDescriptor, req: Request<MessageStream>| {
            let store = store.clone();
            let method = method.clone();
            Box::pin(async move { stream(&store, &method, req.into_inner()).await }) as BoxFuture<_>
        },
    )
    // A gateway whose backend says `compression = "gzip"` can call it.
    .with_gzip()
}

/// The two streaming methods: StreamBooks sends ListBooks' answer one book at
/// a time; ImportBooks runs CreateBook for each message, stopping at the
/// first refusal.
async fn stream(
    store: &Mutex<Store>,
    method: &MethodDescriptor,
    mut requests: MessageStream,
) -> Result<Response<MessageStream>, Status> {
    let sibling = |name: &str| {
        method
            .parent_service()
            .methods()
            .find(|m| m.name() == name)
            .ok_or_else(|| Status::internal(format!("{name} missing from the descriptors")))
    };
    let replies: Vec<Result<DynamicMessage, Status>> = match method.name() {
        "StreamBooks" => {
            let req = requests
                .next()
                .await
                .ok_or_else(|| Status::invalid_argument("no request message"))??;
            let list = handle(store, &sibling("ListBooks")?, req)?;
            let books = list.get_field_by_name("books");
            let books = books.as_deref().and_then(|v| v.as_list()).unwrap_or(&[]);
            books
                .iter()
                .filter_map(|b| b.as_message().cloned())
                .map(Ok)
                .collect()
        }
        "ImportBooks" => {
            let create = sibling("CreateBook")?;
            let mut created = Vec::new();
            while let Some(req) = requests.next().await {
                created.push(Value::Message(handle(store, &create, req?)?));
            }
            let mut reply = DynamicMessage::new(method.output());
            reply.set_field_by_name("books", Value::List(created));
            vec![Ok(reply)]
        }
        other => return Err(Status::unimplemented(format!("{other} is not implemented"))),
    };
    Ok(Response::new(Box::pin(tokio_stream::iter(replies))))
}

fn msg(pool: &DescriptorPool, name: &str) -> DynamicMessage {
    DynamicMessage::new(
        pool.get_message_by_name(name)
            .unwrap_or_else(|| panic!("{name} missing from the bookstore descriptors")),
    )
}

fn now(desc: MessageDescriptor) -> DynamicMessage {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut ts = DynamicMessage::new(desc);
    ts.set_field_by_name("seconds", Value::I64(d.as_secs() as i64));
    ts.set_field_by_name("nanos", Value::I32(d.subsec_nanos() as i32));
    ts
}

fn timestamp_desc(m: &DynamicMessage, field: &str) -> MessageDescriptor {
    m.descriptor()
        .get_field_by_name(field)
        .and_then(|f| f.kind().as_message().cloned())
        .expect("timestamp field")
}

fn seed(pool: &DescriptorPool, store: &Arc<Mutex<Store>>) {
    let mut s = store.lock().expect("store lock");
    for theme in ["Fiction", "Reference"] {
        s.next_shelf += 1;
        let mut shelf = msg(pool, "example.bookstore.v1.Shelf");
        shelf.set_field_by_name("id", Value::I64(s.next_shelf));
        shelf.set_field_by_name("theme", Value::String(theme.into()));
        let ts = now(timestamp_desc(&shelf, "create_time"));
        shelf.set_field_by_name("create_time", Value::Message(ts));
        let id = s.next_shelf;
        s.shelves.insert(id, shelf);
    }
    let books = [
        (
            1,
            "The Left Hand of Darkness",
            "Ursula K. Le Guin",
            1,
            &["classic", "sf"][..],
            304,
        ),
        (1, "Beloved", "Toni Morrison", 1, &["classic"][..], 324),
        (
            2,
            "The Elements of Style",
            "Strunk & White",
            4,
            &["writing"][..],
            105,
        ),
    ];
    for (shelf, title, author, genre, tags, pages) in books {
        s.next_book += 1;
        let mut b = msg(pool, "example.bookstore.v1.Book");
        b.set_field_by_name("id", Value::I64(s.next_book));
        b.set_field_by_name("shelf_id", Value::I64(shelf));
        b.set_field_by_name("title", Value::String(title.into()));
        b.set_field_by_name("author", Value::String(author.into()));
        b.set_field_by_name("genre", Value::EnumNumber(genre));
        b.set_field_by_name(
            "tags",
            Value::List(tags.iter().map(|t| Value::String((*t).into())).collect()),
        );
        b.set_field_by_name("page_count", Value::I32(pages));
        let ts = now(timestamp_desc(&b, "create_time"));
        b.set_field_by_name("create_time", Value::Message(ts.clone()));
        b.set_field_by_name("update_time", Value::Message(ts));
        let id = s.next_book;
        s.books.insert((shelf, id), b);
    }
}

fn i64_field(m: &DynamicMessage, name: &str) -> i64 {
    m.get_field_by_name(name)
        .and_then(|v| v.as_i64())
        .unwrap_or(0)
}

fn handle(
    store: &Mutex<Store>,
    method: &MethodDescriptor,
    req: DynamicMessage,
) -> Result<DynamicMessage, Status> {
    let pool = method.parent_pool();
    let mut reply = DynamicMessage::new(method.output());
    let mut s = store
        .lock()
        .map_err(|_| Status::internal("store lock poisoned"))?;
    let shelf_id = i64_field(&req, "shelf");
    let need_shelf = |s: &Store| {
        if s.shelves.contains_key(&shelf_id) {
            Ok(())
        } else {
            Err(Status::not_found(format!(
                "shelf {shelf_id} does not exist"
            )))
        }
    };
    match method.name() {
        "ListShelves" => {
            let list = s.shelves.values().cloned().map(Value::Message).collect();
            reply.set_field_by_name("shelves", Value::List(list));
        }
        "CreateShelf" => {
            let mut shelf = req
                .get_field_by_name("shelf")
                .and_then(|v| v.as_message().cloned())
                .unwrap_or_else(|| msg(pool, "example.bookstore.v1.Shelf"));
            if shelf
                .get_field_by_name("theme")
                .is_none_or(|t| t.as_str() == Some(""))
            {
                return Err(Status::invalid_argument("shelf.theme is required"));
            }
            s.next_shelf += 1;
            let id = s.next_shelf;
            shelf.set_field_by_name("id", Value::I64(id));
            let ts = now(timestamp_desc(&shelf, "create_time"));
            shelf.set_field_by_name("create_time", Value::Message(ts));
            s.shelves.insert(id, shelf.clone());
            reply = shelf;
        }
        "GetShelf" => {
            need_shelf(&s)?;
            reply = s.shelves[&shelf_id].clone();
        }
        "DeleteShelf" => {
            need_shelf(&s)?;
            s.shelves.remove(&shelf_id);
            s.books.retain(|(shelf, _), _| *shelf != shelf_id);
        }
        "ListBooks" => {
            need_shelf(&s)?;
            let books = list_books(&s, &req).into_iter().map(Value::Message);
            reply.set_field_by_name("books", Value::List(books.collect()));
        }
        "CreateBook" => {
            need_shelf(&s)?;
            let mut book = req
                .get_field_by_name("book")
                .and_then(|v| v.as_message().cloned())
                .unwrap_or_else(|| msg(pool, "example.bookstore.v1.Book"));
            if book
                .get_field_by_name("title")
                .is_none_or(|t| t.as_str() == Some(""))
            {
                return Err(Status::invalid_argument("book.title is required"));
            }
            s.next_book += 1;
            let id = s.next_book;
            book.set_field_by_name("id", Value::I64(id));
            book.set_field_by_name("shelf_id", Value::I64(shelf_id));
            let ts = now(timestamp_desc(&book, "create_time"));
            book.set_field_by_name("create_time", Value::Message(ts.clone()));
            book.set_field_by_name("update_time", Value::Message(ts));
            s.books.insert((shelf_id, id), book.clone());
            reply = book;
        }
        "GetBook" | "DeleteBook" | "UpdateBook" => {
            need_shelf(&s)?;
            let patch = req
                .get_field_by_name("book")
                .and_then(|v| v.as_message().cloned());
            let book_id = match (method.name(), &patch) {
                ("UpdateBook", Some(p)) => i64_field(p, "id"),
                _ => i64_field(&req, "book"),
            };
            let key = (shelf_id, book_id);
            if !s.books.contains_key(&key) {
                return Err(Status::not_found(format!(
                    "book {book_id} does not exist on shelf {shelf_id}"
                )));
            }
            match method.name() {
                "GetBook" => reply = s.books[&key].clone(),
                "DeleteBook" => {
                    s.books.remove(&key);
                }
                _ => {
                    let patch = patch.unwrap_or_else(|| msg(pool, "example.bookstore.v1.Book"));
                    let mask: Vec<String> = req
                        .get_field_by_name("update_mask")
                        .and_then(|m| {
                            m.as_message()?.get_field_by_name("paths").and_then(|p| {
                                p.as_list().map(|l| {
                                    l.iter()
                                        .filter_map(|v| v.as_str().map(str::to_owned))
                                        .collect()
                                })
                            })
                        })
                        .unwrap_or_default();
                    let paths: Vec<String> = if mask.is_empty() {
                        MUTABLE_BOOK_FIELDS
                            .iter()
                            .filter(|f| patch.has_field_by_name(f))
                            .map(|f| (*f).to_owned())
                            .collect()
                    } else {
                        mask
                    };
                    let book = s.books.get_mut(&key).expect("checked above");
                    for p in &paths {
                        if !MUTABLE_BOOK_FIELDS.contains(&p.as_str()) {
                            return Err(Status::invalid_argument(format!(
                                "update_mask path \"{p}\" is not a field that can be updated ({})",
                                MUTABLE_BOOK_FIELDS.join(", ")
                            )));
                        }
                    }
                    // title is REQUIRED (field_behavior): a mask may not clear it.
                    let clears_title = paths.iter().any(|p| p == "title")
                        && patch
                            .get_field_by_name("title")
                            .is_none_or(|t| t.as_str() == Some(""));
                    if clears_title {
                        return Err(Status::invalid_argument("book.title is required"));
                    }
                    for p in &paths {
                        let v = patch.get_field_by_name(p).map(|v| v.into_owned());
                        match v {
                            Some(v) => book.set_field_by_name(p, v),
                            None => book.clear_field_by_name(p),
                        }
                    }
                    let ts = now(timestamp_desc(book, "update_time"));
                    book.set_field_by_name("update_time", Value::Message(ts));
                    reply = book.clone();
                }
            }
        }
        other => return Err(Status::unimplemented(format!("{other} is not implemented"))),
    }
    Ok(reply)
}

/// The books of the request's shelf, filtered by genre and tags and cut at
/// page_size: ListBooks answers them in one message, StreamBooks one each.
fn list_books(s: &Store, req: &DynamicMessage) -> Vec<DynamicMessage> {
    let shelf_id = i64_field(req, "shelf");
    let genre = req
        .get_field_by_name("genre")
        .and_then(|v| v.as_enum_number())
        .unwrap_or(0);
    let tags: Vec<String> = req
        .get_field_by_name("tags")
        .and_then(|v| {
            v.as_list().map(|l| {
                l.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
        })
        .unwrap_or_default();
    let page_size = req
        .get_field_by_name("page_size")
        .and_then(|v| v.as_i32())
        .unwrap_or(0);
    s.books
        .range((shelf_id, i64::MIN)..=(shelf_id, i64::MAX))
        .map(|(_, b)| b)
        .filter(|b| {
            genre == 0
                || b.get_field_by_name("genre")
                    .and_then(|v| v.as_enum_number())
                    == Some(genre)
        })
        .filter(|b| {
            let have = b.get_field_by_name("tags");
            let have = have.as_deref().and_then(|v| v.as_list()).unwrap_or(&[]);
            tags.iter()
                .all(|t| have.iter().any(|h| h.as_str() == Some(t)))
        })
        .take(if page_size > 0 {
            page_size as usize
        } else {
            usize::MAX
        })
        .cloned()
        .collect()
}
