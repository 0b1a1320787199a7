//! The bundled example backend: `example.bookstore.v1.Bookstore` with
//! in-memory storage, served by `gateway demo` so a newcomer can curl a
//! route with nothing else installed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use prost_reflect::{
    DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor, ReflectMessage, Value,
};
use tokio::sync::{broadcast, mpsc};
use tonic::{Request, Response, Status};

use tokio_stream::StreamExt as _;

use super::dynamic::{BoxFuture, DynamicServer, MessageStream};

pub const SERVICE: &str = "example.bookstore.v1.Bookstore";

/// Fields of Book a client may change through UpdateBook.
const MUTABLE_BOOK_FIELDS: &[&str] = &["title", "author", "genre", "tags", "page_count"];

struct Store {
    shelves: BTreeMap<i64, DynamicMessage>,
    books: BTreeMap<(i64, i64), DynamicMessage>,
    next_shelf: i64,
    next_book: i64,
    /// Changes to books, as ShelfEvent messages, for ShelfFeed.
    events: broadcast::Sender<DynamicMessage>,
}

/// ShelfEvents a feed may fall behind by; a feed further behind skips
/// what it missed (the demo's feed is best effort).
const FEED_BACKLOG: usize = 64;

impl Default for Store {
    fn default() -> Self {
        Store {
            shelves: BTreeMap::new(),
            books: BTreeMap::new(),
            next_shelf: 0,
            next_book: 0,
            events: broadcast::channel(FEED_BACKLOG).0,
        }
    }
}

impl Store {
    /// Tells the feeds of the book's shelf (no one listening is fine).
    fn publish(&self, pool: &DescriptorPool, kind: &str, book: &DynamicMessage) {
        if self.events.receiver_count() == 0 {
            return;
        }
        let mut event = msg(pool, "example.bookstore.v1.ShelfEvent");
        let number = event
            .descriptor()
            .get_field_by_name("kind")
            .and_then(|f| f.kind().as_enum().cloned())
            .and_then(|e| e.get_value_by_name(kind))
            .map_or(0, |v| v.number());
        event.set_field_by_name("kind", Value::EnumNumber(number));
        event.set_field_by_name("shelf", Value::I64(i64_field(book, "shelf_id")));
        event.set_field_by_name("book", Value::Message(book.clone()));
        let _ = self.events.send(event);
    }
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

/// The streaming methods: StreamBooks sends ListBooks' answer one book at
/// a time; ImportBooks runs CreateBook for each message, stopping at the
/// first refusal; ShelfFeed follows a shelf (see [`feed`]).
async fn stream(
    store: &Arc<Mutex<Store>>,
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
        "ShelfFeed" => return Ok(Response::new(feed(store, method, requests))),
        other => return Err(Status::unimplemented(format!("{other} is not implemented"))),
    };
    Ok(Response::new(Box::pin(tokio_stream::iter(replies))))
}

/// ShelfFeed: the shelf's changes as they happen, and the client's books
/// added on the way, until the client ends its stream.
fn feed(
    store: &Arc<Mutex<Store>>,
    method: &MethodDescriptor,
    requests: MessageStream,
) -> MessageStream {
    let (tx, rx) = mpsc::channel(16);
    let store = store.clone();
    let create = method
        .parent_service()
        .methods()
        .find(|m| m.name() == "CreateBook");
    tokio::spawn(async move {
        let mut requests = requests;
        let mut events = match store.lock() {
            Ok(s) => s.events.subscribe(),
            Err(_) => return,
        };
        let mut shelf: Option<i64> = None;
        loop {
            tokio::select! {
                req = requests.next() => {
                    let req = match req {
                        None => break,
                        Some(Err(status)) => {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                        Some(Ok(r)) => r,
                    };
                    if let Err(status) = feed_request(&store, create.as_ref(), &mut shelf, req) {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
                event = events.recv(), if shelf.is_some() => match event {
                    Ok(e) if Some(i64_field(&e, "shelf")) == shelf => {
                        if tx.send(Ok(e)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            }
        }
        // The events of the client's last messages are already queued.
        while let Ok(e) = events.try_recv() {
            if Some(i64_field(&e, "shelf")) == shelf && tx.send(Ok(e)).await.is_err() {
                return;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// One ShelfFeed message: the first names the shelf; `add` adds a book.
fn feed_request(
    store: &Mutex<Store>,
    create: Option<&MethodDescriptor>,
    shelf: &mut Option<i64>,
    req: DynamicMessage,
) -> Result<(), Status> {
    let id = i64_field(&req, "shelf");
    match *shelf {
        None => {
            let s = store
                .lock()
                .map_err(|_| Status::internal("store lock poisoned"))?;
            if !s.shelves.contains_key(&id) {
                return Err(Status::not_found(format!("shelf {id} does not exist")));
            }
            *shelf = Some(id);
        }
        Some(current) if current != id => {
            return Err(Status::invalid_argument(format!(
                "this feed follows shelf {current}, not {id}"
            )))
        }
        Some(_) => {}
    }
    if req.has_field_by_name("add") {
        let create = create.ok_or_else(|| Status::internal("CreateBook missing"))?;
        let mut create_req = DynamicMessage::new(create.input());
        create_req.set_field_by_name("shelf", Value::I64(id));
        if let Some(book) = req.get_field_by_name("add") {
            create_req.set_field_by_name("book", book.into_owned());
        }
        handle(store, create, create_req)?;
    }
    Ok(())
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
            s.publish(pool, "BOOK_ADDED", &book);
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
                    if let Some(book) = s.books.remove(&key) {
                        s.publish(pool, "BOOK_DELETED", &book);
                    }
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
                    s.publish(pool, "BOOK_UPDATED", &reply);
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
