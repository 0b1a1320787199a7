//! The bundled example bookstore, behind the repository's own routes.toml
//! (with only the addresses and the descriptors folder substituted).

use gateway::example::bookstore;
use gateway_tests::{bookstore_pool, repo_root, spawn_backend, toml_path, TestGateway};
use serde_json::json;

/// The repository's routes.toml text, pointed at `backend` and the
/// repository's descriptors, listening on an ephemeral port.
fn repo_config(backend: &str) -> String {
    let text = std::fs::read_to_string(repo_root().join("routes.toml")).expect("read routes.toml");
    for needle in [
        "listen = \"127.0.0.1:8080\"",
        "\"127.0.0.1:50051\"",
        "descriptors = \"descriptors\"",
    ] {
        assert!(
            text.contains(needle),
            "routes.toml no longer contains {needle}"
        );
    }
    text.replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:0\"")
        .replace("\"127.0.0.1:50051\"", &format!("\"{backend}\""))
        .replace(
            "descriptors = \"descriptors\"",
            &format!(
                "descriptors = \"{}\"",
                toml_path(&repo_root().join("descriptors"))
            ),
        )
}

async fn start() -> TestGateway {
    let backend = spawn_backend(bookstore::server(&bookstore_pool())).await;
    TestGateway::start_with(
        &repo_config(&backend),
        &backend,
        &repo_root().join("descriptors"),
    )
    .await
}

#[tokio::test]
async fn lists_the_seeded_shelves_through_the_annotation_route() {
    let gw = start().await;
    let r = gw.get("/v1/shelves").await;
    let shelves = r.ok()["shelves"].as_array().expect("shelves array").clone();
    let ids: Vec<&str> = shelves
        .iter()
        .map(|s| s["id"].as_str().unwrap_or("?"))
        .collect();
    let themes: Vec<&str> = shelves
        .iter()
        .map(|s| s["theme"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(ids, ["1", "2"], "int64 ids are JSON strings: {}", r.text);
    assert_eq!(themes, ["Fiction", "Reference"]);
    for s in &shelves {
        let t = s["createTime"].as_str().expect("createTime");
        assert!(
            t.ends_with('Z') && t.contains('T'),
            "RFC 3339 timestamp: {t}"
        );
    }
}

#[tokio::test]
async fn gets_a_shelf_and_its_books() {
    let gw = start().await;
    let r = gw.get("/v1/shelves/1").await;
    assert_eq!(r.ok()["theme"], "Fiction");
    let r = gw.get("/v1/shelves/1/books").await;
    let books = r.ok()["books"].as_array().unwrap().clone();
    let titles: Vec<&str> = books.iter().map(|b| b["title"].as_str().unwrap()).collect();
    assert_eq!(titles, ["The Left Hand of Darkness", "Beloved"]);
    assert_eq!(books[0]["genre"], "FICTION");
    assert_eq!(books[0]["pageCount"], 304);
    assert_eq!(books[0]["shelfId"], "1");
    assert_eq!(books[0]["tags"], json!(["classic", "sf"]));
}

#[tokio::test]
async fn list_books_filters_from_query_parameters() {
    let gw = start().await;
    let r = gw.get("/v1/shelves/1/books?tags=sf").await;
    let books = r.ok()["books"].as_array().unwrap().clone();
    assert_eq!(books.len(), 1);
    assert_eq!(books[0]["title"], "The Left Hand of Darkness");
    let r = gw.get("/v1/shelves/1/books?pageSize=1").await;
    assert_eq!(r.ok()["books"].as_array().unwrap().len(), 1);
    let r = gw.get("/v1/shelves/2/books?genre=REFERENCE").await;
    assert_eq!(r.ok()["books"][0]["title"], "The Elements of Style");
    let r = gw.get("/v1/shelves/2/books?genre=FICTION").await;
    assert_eq!(r.ok(), &json!({}), "an empty list is omitted");
}

#[tokio::test]
async fn creates_a_shelf_and_a_book_and_reads_them_back() {
    let gw = start().await;
    let r = gw.post("/v1/shelves", &json!({"theme": "Poetry"})).await;
    let shelf = r.ok().clone();
    assert_eq!(shelf["theme"], "Poetry");
    let id = shelf["id"]
        .as_str()
        .expect("id is an int64 string")
        .to_owned();
    assert_eq!(id, "3");

    let r = gw
        .post(
            &format!("/v1/shelves/{id}/books"),
            &json!({"title": "Leaves of Grass", "author": "Walt Whitman", "genre": "POETRY", "tags": ["us"], "page_count": 145}),
        )
        .await;
    // The demo shapes CreateBook: 201 with the new book's address.
    assert_eq!(r.status, 201, "{}", r.text);
    let book: serde_json::Value = serde_json::from_str(&r.text).unwrap();
    assert_eq!(
        r.header("location"),
        format!("/v1/shelves/{id}/books/{}", book["id"].as_str().unwrap())
    );
    assert_eq!(book["title"], "Leaves of Grass");
    assert_eq!(book["shelfId"], id);
    assert_eq!(book["pageCount"], 145);
    let book_id = book["id"].as_str().unwrap().to_owned();

    let r = gw.get(&format!("/v1/shelves/{id}/books/{book_id}")).await;
    assert_eq!(r.ok(), &book);
    let r = gw.get("/v1/shelves").await;
    assert_eq!(r.ok()["shelves"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn creating_a_shelf_without_a_theme_is_the_backends_400() {
    let gw = start().await;
    gw.post("/v1/shelves", &json!({}))
        .await
        .assert_error(400, 3, "shelf.theme is required");
}

#[tokio::test]
async fn patch_with_update_mask_changes_only_the_masked_fields() {
    let gw = start().await;
    let r = gw
        .patch(
            "/v1/shelves/1/books/2?updateMask=title,pageCount",
            &json!({"title": "Beloved (2nd ed.)", "author": "Somebody Else", "pageCount": 400}),
        )
        .await;
    let book = r.ok().clone();
    assert_eq!(book["id"], "2");
    assert_eq!(book["title"], "Beloved (2nd ed.)");
    assert_eq!(book["pageCount"], 400);
    assert_eq!(book["author"], "Toni Morrison", "author is not in the mask");
    let r = gw.get("/v1/shelves/1/books/2").await;
    assert_eq!(r.ok(), &book);
}

#[tokio::test]
async fn patch_without_update_mask_changes_every_field_sent() {
    let gw = start().await;
    let r = gw
        .patch(
            "/v1/shelves/1/books/1",
            &json!({"author": "U. K. Le Guin", "tags": ["hainish"]}),
        )
        .await;
    let book = r.ok().clone();
    assert_eq!(book["author"], "U. K. Le Guin");
    assert_eq!(book["tags"], json!(["hainish"]));
    assert_eq!(
        book["title"], "The Left Hand of Darkness",
        "title was not sent"
    );
    assert_eq!(book["id"], "1", "the id comes from the path");
}

#[tokio::test]
async fn patch_with_a_mask_naming_an_immutable_field_is_400() {
    let gw = start().await;
    gw.patch(
        "/v1/shelves/1/books/1?updateMask=id",
        &json!({"title": "x"}),
    )
    .await
    .assert_error(400, 3, "update_mask");
}

#[tokio::test]
async fn patch_may_not_clear_the_required_title() {
    // title is REQUIRED (google.api.field_behavior), so the OpenAPI document
    // lists it as required in replies too: no update may leave it empty.
    let gw = start().await;
    gw.patch(
        "/v1/shelves/1/books/1?updateMask=title,author",
        &json!({"author": "x"}),
    )
    .await
    .assert_error(400, 3, "book.title is required");
    let r = gw.get("/v1/shelves/1/books/1").await;
    assert_eq!(r.ok()["title"], "The Left Hand of Darkness");
    assert_eq!(r.ok()["author"], "Ursula K. Le Guin");
}

#[tokio::test]
async fn deletes_a_book_and_then_it_is_404() {
    let gw = start().await;
    let r = gw.delete("/v1/shelves/1/books/1").await;
    assert_eq!(r.ok(), &json!({}));
    gw.get("/v1/shelves/1/books/1")
        .await
        .assert_error(404, 5, "book 1 does not exist on shelf 1");
    gw.delete("/v1/shelves/1/books/1")
        .await
        .assert_error(404, 5, "does not exist");
}

#[tokio::test]
async fn deleting_a_shelf_removes_its_books() {
    let gw = start().await;
    assert_eq!(gw.delete("/v1/shelves/2").await.ok(), &json!({}));
    gw.get("/v1/shelves/2")
        .await
        .assert_error(404, 5, "shelf 2 does not exist");
    gw.get("/v1/shelves/2/books/3")
        .await
        .assert_error(404, 5, "shelf 2 does not exist");
}

#[tokio::test]
async fn missing_book_is_404_with_the_backends_message() {
    let gw = start().await;
    gw.get("/v1/shelves/1/books/99").await.assert_error(
        404,
        5,
        "book 99 does not exist on shelf 1",
    );
    gw.get("/v1/shelves/9/books")
        .await
        .assert_error(404, 5, "shelf 9 does not exist");
}

#[tokio::test]
async fn non_numeric_ids_are_400_before_reaching_the_backend() {
    let gw = start().await;
    gw.get("/v1/shelves/abc")
        .await
        .assert_error(400, 3, "shelf");
    gw.get("/v1/shelves/1/books/99999999999999999999")
        .await
        .assert_error(400, 3, "out of range");
}

#[tokio::test]
async fn wrong_method_on_a_bookstore_path_lists_the_allowed_ones() {
    let gw = start().await;
    let r = gw.put("/v1/shelves/1", &json!({})).await;
    r.assert_error(405, 12, "PUT");
    let mut allow: Vec<String> = r
        .header("allow")
        .split(',')
        .map(|s| s.trim().to_owned())
        .collect();
    allow.sort();
    assert_eq!(allow, ["DELETE", "GET", "HEAD"]);
}

#[tokio::test]
async fn x_request_id_is_forwarded_by_the_repos_config() {
    // The bookstore does not echo metadata, so check the snapshot instead.
    let backend = spawn_backend(bookstore::server(&bookstore_pool())).await;
    let path = gateway_tests::write_config(&repo_config(&backend));
    let s = gateway::snapshot::Snapshot::load(&path).unwrap_or_else(|e| panic!("{e}"));
    for r in &s.routes {
        assert!(
            r.forward_headers.iter().any(|h| h == "x-request-id"),
            "{} {} does not forward x-request-id",
            r.method,
            r.template
        );
    }
    let delete_book = s
        .routes
        .iter()
        .find(|r| {
            r.method == "DELETE" && r.template.to_string() == "/v1/shelves/{shelf}/books/{book}"
        })
        .expect("DeleteBook route");
    assert_eq!(delete_book.timeout, std::time::Duration::from_secs(2));
}
