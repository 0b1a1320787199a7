//! Compressed request bodies, decoded as they arrive.
//!
//! [`request_body`] swaps a body sent with `Content-Encoding` for one that
//! yields the decoded bytes in chunks of at most [`CHUNK`]: every reader
//! downstream (the unary JSON read, NDJSON lines, raw and multipart bodies)
//! counts decoded bytes against its own limit, `server.max_body_bytes`
//! first, and stops reading when it passes it. A small body that inflates
//! to gigabytes (a "zip bomb") is therefore refused with 413 after at most
//! the limit plus one chunk has been decoded, never held whole.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_compression::tokio::bufread::{BrotliDecoder, GzipDecoder, ZlibDecoder, ZstdDecoder};
use axum::body::{Body, BodyDataStream};
use bytes::{Bytes, BytesMut};
use futures_util::TryStreamExt as _;
use http::{header, HeaderMap};
use http_body::Frame;
use tokio_util::io::StreamReader;

use super::Coding;
use crate::error::Error;

/// Most decoded bytes one frame carries: what a body grows by per read.
/// 32 KiB: a few times a TCP read, small beside the 4 MiB body limit.
pub const CHUNK: usize = 32 * 1024;

/// `body` as the decoded bytes of its `Content-Encoding`; the header (and
/// `Content-Length`, which counted the encoded bytes) is taken off `headers`
/// when it names a coding. A body without one is returned as it is, at the
/// cost of one header lookup. An unknown coding is a 415 naming the ones
/// read here.
pub fn request_body(headers: &mut HeaderMap, body: Body) -> Result<Body, Error> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(body);
    };
    let text = value.to_str().unwrap_or("(not text)");
    // Codings apply in the order listed, so they come off in reverse.
    let mut codings: Vec<Coding> = Vec::new();
    for token in text.split(',').map(str::trim) {
        if token.is_empty() || token.eq_ignore_ascii_case("identity") {
            continue;
        }
        match Coding::parse(token) {
            Some(c) => codings.push(c),
            None => {
                return Err(Error::UnsupportedEncoding(format!(
                    "content encoding {token:?} is not supported; send the body as {}",
                    super::READABLE
                )))
            }
        }
    }
    headers.remove(header::CONTENT_ENCODING);
    if codings.is_empty() {
        return Ok(body);
    }
    headers.remove(header::CONTENT_LENGTH);
    Ok(codings
        .into_iter()
        .rev()
        .fold(body, |body, coding| Body::new(Decoded::new(body, coding))))
}

type Source =
    StreamReader<futures_util::stream::MapErr<BodyDataStream, fn(axum::Error) -> io::Error>, Bytes>;

enum Decoder {
    Gzip(GzipDecoder<Source>),
    Deflate(ZlibDecoder<Source>),
    Brotli(BrotliDecoder<Source>),
    Zstd(ZstdDecoder<Source>),
}

/// A body decoded as it is read: each frame at most [`CHUNK`] bytes.
pub struct Decoded {
    decoder: Decoder,
    coding: Coding,
    buf: BytesMut,
    done: bool,
}

/// Why a compressed body could not be read: its own bytes are not valid in
/// its coding, or the connection failed under it.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the body is not valid {coding} data: {message}")]
    Corrupt {
        coding: &'static str,
        message: String,
    },
    #[error("{0}")]
    Read(io::Error),
}

fn read_error(e: axum::Error) -> io::Error {
    io::Error::other(ReadFailed(e))
}

/// The connection's error, told apart from the decoder's own.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ReadFailed(axum::Error);

impl Decoded {
    pub fn new(body: Body, coding: Coding) -> Decoded {
        let source = StreamReader::new(
            body.into_data_stream()
                .map_err(read_error as fn(axum::Error) -> io::Error),
        );
        let decoder = match coding {
            Coding::Gzip => {
                let mut d = GzipDecoder::new(source);
                // `cat a.gz b.gz` is a valid gzip file, and gzip -d reads it whole.
                d.multiple_members(true);
                Decoder::Gzip(d)
            }
            Coding::Deflate => Decoder::Deflate(ZlibDecoder::new(source)),
            Coding::Br => Decoder::Brotli(BrotliDecoder::new(source)),
            Coding::Zstd => {
                let mut d = ZstdDecoder::new(source);
                d.multiple_members(true);
                Decoder::Zstd(d)
            }
        };
        Decoded {
            decoder,
            coding,
            buf: BytesMut::new(),
            done: false,
        }
    }
}

impl http_body::Body for Decoded {
    type Data = Bytes;
    type Error = DecodeError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, DecodeError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        this.buf.reserve(CHUNK);
        // Reads into the spare capacity only: at most CHUNK bytes decoded.
        let spare = CHUNK.min(this.buf.capacity() - this.buf.len());
        let mut limited = (&mut this.buf).limit(spare);
        let polled = match &mut this.decoder {
            Decoder::Gzip(d) => tokio_util::io::poll_read_buf(Pin::new(d), cx, &mut limited),
            Decoder::Deflate(d) => tokio_util::io::poll_read_buf(Pin::new(d), cx, &mut limited),
            Decoder::Brotli(d) => tokio_util::io::poll_read_buf(Pin::new(d), cx, &mut limited),
            Decoder::Zstd(d) => tokio_util::io::poll_read_buf(Pin::new(d), cx, &mut limited),
        };
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(0)) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Ok(_)) => Poll::Ready(Some(Ok(Frame::data(this.buf.split().freeze())))),
            Poll::Ready(Err(e)) => {
                this.done = true;
                let e = match e.get_ref().is_some_and(|inner| inner.is::<ReadFailed>()) {
                    true => DecodeError::Read(e),
                    false => DecodeError::Corrupt {
                        coding: this.coding.name(),
                        message: e.to_string(),
                    },
                };
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

use bytes::BufMut as _;

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use std::io::Write as _;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn headers(coding: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_ENCODING, coding.parse().unwrap());
        h.insert(header::CONTENT_LENGTH, "10".parse().unwrap());
        h
    }

    #[tokio::test]
    async fn a_gzip_body_is_read_decoded_and_its_headers_go() {
        let mut h = headers("gzip");
        let body = request_body(&mut h, Body::from(gzip(b"{\"a\":1}"))).unwrap();
        assert!(h.get(header::CONTENT_ENCODING).is_none());
        assert!(h.get(header::CONTENT_LENGTH).is_none());
        let got = body.collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], b"{\"a\":1}");
    }

    #[tokio::test]
    async fn a_body_without_a_coding_is_left_alone() {
        let mut h = HeaderMap::new();
        let body = request_body(&mut h, Body::from("x")).unwrap();
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"x");
        let mut h = headers("identity");
        let body = request_body(&mut h, Body::from("y")).unwrap();
        assert_eq!(h[header::CONTENT_LENGTH], "10");
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"y");
    }

    #[test]
    fn an_unknown_coding_is_a_415_naming_the_supported_ones() {
        let mut h = headers("compress");
        let e = request_body(&mut h, Body::empty()).unwrap_err();
        assert_eq!(e.http_status(), 415);
        let resp = e.clone().into_response();
        assert_eq!(
            resp.headers()[header::ACCEPT_ENCODING],
            "gzip, br, zstd, deflate"
        );
        let text = e.to_string();
        assert!(
            text.contains("\"compress\"") && text.contains("gzip, br, zstd"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn frames_stay_small_however_far_the_body_inflates() {
        let mut h = headers("gzip");
        let body = request_body(&mut h, Body::from(gzip(&vec![0u8; 8 << 20]))).unwrap();
        let mut body = std::pin::pin!(body);
        let mut total = 0;
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            assert!(data.len() <= CHUNK);
            total += data.len();
        }
        assert_eq!(total, 8 << 20);
    }

    #[tokio::test]
    async fn corrupt_data_is_an_error_naming_the_coding() {
        let mut h = headers("gzip");
        let body = request_body(&mut h, Body::from("not gzip at all")).unwrap();
        let e = body.collect().await.unwrap_err().to_string();
        assert!(e.contains("not valid gzip data"), "{e}");
    }
}
