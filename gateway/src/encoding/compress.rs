//! Answers compressed as the client's `Accept-Encoding` asks.
//!
//! [`Compressed`] wraps an answer's body and compresses each frame as it
//! passes, flushing the compressor after every frame (gzip's sync flush,
//! brotli's and zstd's flush): a streamed NDJSON or SSE answer stays a
//! stream, each message readable by the client as soon as it is written.
//! A whole answer is one frame, compressed and finished in one go.
//! (tower-http's CompressionLayer does not flush per frame, and skips SSE by
//! default for that reason.)
//!
//! Not compressed: answers shorter than `min_bytes`, answers that already
//! have a `Content-Encoding`, and content types that are compressed already
//! ([`precompressed`]).

use std::io::{self, Write as _};
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::{Body as _, Frame};

use super::Coding;

/// `[server.compression]`, compiled.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The codings offered, in order of preference; empty: off.
    pub offered: Vec<Coding>,
    /// Known-length answers shorter than this are sent as they are.
    pub min_bytes: usize,
}

impl Policy {
    /// The coding to answer a request carrying `accept_encoding` in, if any.
    pub fn choose(&self, accept_encoding: Option<&HeaderValue>) -> Option<Chosen> {
        let ae = accept_encoding?;
        if self.offered.is_empty() {
            return None;
        }
        super::negotiate(ae.as_bytes(), &self.offered).map(|coding| Chosen {
            coding,
            min_bytes: self.min_bytes,
        })
    }
}

/// The coding chosen for one answer, applied when the answer comes back.
#[derive(Debug, Clone, Copy)]
pub struct Chosen {
    pub coding: Coding,
    pub min_bytes: usize,
}

impl Chosen {
    /// Compresses `resp`'s body when it is worth it.
    pub fn apply(self, resp: &mut Response<Body>) {
        let status = resp.status();
        if status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
            || status == StatusCode::PARTIAL_CONTENT
        {
            return;
        }
        let headers = resp.headers();
        if headers.contains_key(header::CONTENT_ENCODING)
            || headers.contains_key(header::CONTENT_RANGE)
            || headers
                .get(header::CONTENT_TYPE)
                .is_some_and(|ct| precompressed(ct.as_bytes()))
        {
            return;
        }
        let hint = resp.body().size_hint();
        if hint.exact().is_some_and(|n| n < self.min_bytes as u64) {
            return;
        }
        let Ok(encoder) = Encoder::new(self.coding) else {
            return;
        };
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(self.coding.name()),
        );
        headers.remove(header::CONTENT_LENGTH);
        headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
        // A strong ETag names these exact bytes, which compressing changes
        // (RFC 9110 section 8.8.1): weakened, as nginx does, it still
        // validates the uncompressed answer under the weak comparison
        // If-None-Match uses.
        if let Some(tag) = headers
            .get(header::ETAG)
            .filter(|t| t.as_bytes().starts_with(b"\""))
        {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(tag.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&weak) {
                headers.insert(header::ETAG, v);
            }
        }
        let body = std::mem::take(resp.body_mut());
        *resp.body_mut() = Body::new(Compressed {
            inner: body,
            encoder: Some(encoder),
            trailers: None,
        });
    }
}

/// Content types not worth compressing again: media, archives, and opaque
/// bytes (a raw `HttpBody` answer without a type of its own); and gRPC,
/// whose messages carry their own compression. gRPC-Web and Connect
/// answers are compressed like any other when the client's
/// `Accept-Encoding` asks: browsers send it and decode it for the script,
/// while those protocols' own clients outside a browser ask for message
/// compression in headers of their own (`grpc-accept-encoding`,
/// `connect-accept-encoding`) and so get identity.
pub fn precompressed(content_type: &[u8]) -> bool {
    let media = content_type
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let starts = |p: &[u8]| media.len() >= p.len() && media[..p.len()].eq_ignore_ascii_case(p);
    let is = |p: &[u8]| media.eq_ignore_ascii_case(p);
    starts(b"image/") && !is(b"image/svg+xml")
        || starts(b"video/")
        || starts(b"audio/")
        || starts(b"font/woff")
        || (starts(b"application/grpc") && !starts(b"application/grpc-web"))
        || is(b"application/zip")
        || is(b"application/gzip")
        || is(b"application/x-gzip")
        || is(b"application/zstd")
        || is(b"application/x-bzip2")
        || is(b"application/x-xz")
        || is(b"application/x-7z-compressed")
        || is(b"application/vnd.rar")
        || is(b"application/octet-stream")
        || is(b"application/pdf")
}

/// gzip level 6 (zlib's default); brotli quality 4, the level
/// tower-http and nginx use for on-the-fly answers (11 is for files
/// compressed once), with a 256 KiB window so that each stream holds a
/// bounded state; zstd level 3, its default.
const GZIP_LEVEL: u32 = 6;
const BROTLI_QUALITY: u32 = 4;
const BROTLI_LGWIN: u32 = 18;
const BROTLI_BUFFER: usize = 4096;
const ZSTD_LEVEL: i32 = 3;

/// One answer's compressor, writing into a buffer taken after each frame.
enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Deflate(flate2::write::ZlibEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    fn new(coding: Coding) -> io::Result<Encoder> {
        Ok(match coding {
            Coding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(GZIP_LEVEL),
            )),
            Coding::Deflate => Encoder::Deflate(flate2::write::ZlibEncoder::new(
                Vec::new(),
                flate2::Compression::new(GZIP_LEVEL),
            )),
            Coding::Br => Encoder::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                BROTLI_BUFFER,
                BROTLI_QUALITY,
                BROTLI_LGWIN,
            ))),
            Coding::Zstd => {
                Encoder::Zstd(zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL)?)
            }
        })
    }

    /// Compresses `data` and flushes: what it returns decodes to
    /// everything written so far.
    fn write(&mut self, data: &[u8]) -> io::Result<Bytes> {
        match self {
            Encoder::Gzip(e) => {
                e.write_all(data)?;
                e.flush()?;
                Ok(Bytes::from(std::mem::take(e.get_mut())))
            }
            Encoder::Deflate(e) => {
                e.write_all(data)?;
                e.flush()?;
                Ok(Bytes::from(std::mem::take(e.get_mut())))
            }
            Encoder::Brotli(e) => {
                e.write_all(data)?;
                e.flush()?;
                Ok(Bytes::from(std::mem::take(e.get_mut())))
            }
            Encoder::Zstd(e) => {
                e.write_all(data)?;
                e.flush()?;
                Ok(Bytes::from(std::mem::take(e.get_mut())))
            }
        }
    }

    /// Compresses `data` and ends the stream.
    fn finish(self, data: &[u8]) -> io::Result<Bytes> {
        let out = match self {
            Encoder::Gzip(mut e) => {
                e.write_all(data)?;
                e.finish()?
            }
            Encoder::Deflate(mut e) => {
                e.write_all(data)?;
                e.finish()?
            }
            Encoder::Brotli(mut e) => {
                e.write_all(data)?;
                e.into_inner()
            }
            Encoder::Zstd(mut e) => {
                e.write_all(data)?;
                e.finish()?
            }
        };
        Ok(Bytes::from(out))
    }
}

/// An answer's body, compressed frame by frame.
pub struct Compressed {
    inner: Body,
    /// `None` once finished.
    encoder: Option<Encoder>,
    /// Trailers that came after the last data, sent after the compressed
    /// stream's end.
    trailers: Option<Frame<Bytes>>,
}

impl Compressed {
    /// Ends the compressed stream with `data`.
    fn finish(&mut self, data: &[u8]) -> Option<Result<Frame<Bytes>, axum::Error>> {
        let encoder = self.encoder.take()?;
        match encoder.finish(data) {
            Ok(out) if out.is_empty() => None,
            Ok(out) => Some(Ok(Frame::data(out))),
            Err(e) => Some(Err(axum::Error::new(e))),
        }
    }
}

impl http_body::Body for Compressed {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        loop {
            if this.encoder.is_none() {
                return Poll::Ready(this.trailers.take().map(Ok));
            }
            let frame = match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                None => return Poll::Ready(this.finish(&[])),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(frame)) => frame,
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(trailers) => {
                    this.trailers = Some(trailers);
                    match this.finish(&[]) {
                        Some(end) => return Poll::Ready(Some(end)),
                        None => continue,
                    }
                }
            };
            if this.inner.is_end_stream() {
                // A whole answer, or a stream's last message: finish here
                // rather than in one more poll, so that it is one frame.
                if let Some(end) = this.finish(&data) {
                    return Poll::Ready(Some(end));
                }
                continue;
            }
            if data.is_empty() {
                continue;
            }
            let Some(encoder) = this.encoder.as_mut() else {
                continue;
            };
            match encoder.write(&data) {
                Ok(out) if out.is_empty() => continue,
                Ok(out) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                Err(e) => {
                    this.encoder = None;
                    return Poll::Ready(Some(Err(axum::Error::new(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.encoder.is_none() && self.trailers.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use std::io::Read as _;

    fn decode(coding: Coding, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match coding {
            Coding::Gzip => flate2::read::GzDecoder::new(data)
                .read_to_end(&mut out)
                .map(drop),
            Coding::Deflate => flate2::read::ZlibDecoder::new(data)
                .read_to_end(&mut out)
                .map(drop),
            Coding::Br => brotli::Decompressor::new(data, 4096)
                .read_to_end(&mut out)
                .map(drop),
            Coding::Zstd => zstd::stream::read::Decoder::new(data)
                .unwrap()
                .read_to_end(&mut out)
                .map(drop),
        }
        .unwrap();
        out
    }

    fn policy() -> Policy {
        Policy {
            offered: vec![Coding::Zstd, Coding::Br, Coding::Gzip, Coding::Deflate],
            min_bytes: 1024,
        }
    }

    fn json(len: usize) -> Response<Body> {
        let mut resp = Response::new(Body::from("x".repeat(len)));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        resp
    }

    #[tokio::test]
    async fn a_large_answer_round_trips_in_every_coding() {
        for coding in [Coding::Gzip, Coding::Br, Coding::Zstd, Coding::Deflate] {
            let ae = HeaderValue::from_static(coding.name());
            let chosen = policy().choose(Some(&ae)).unwrap();
            assert_eq!(chosen.coding, coding);
            let mut resp = json(5000);
            resp.headers_mut()
                .insert(header::ETAG, HeaderValue::from_static("\"abc\""));
            chosen.apply(&mut resp);
            assert_eq!(resp.headers()[header::CONTENT_ENCODING], coding.name());
            assert_eq!(resp.headers()[header::ETAG], "W/\"abc\"");
            assert!(resp.headers().get(header::CONTENT_LENGTH).is_none());
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert!(body.len() < 5000);
            assert_eq!(decode(coding, &body), "x".repeat(5000).as_bytes());
        }
    }

    #[test]
    fn small_precompressed_or_encoded_answers_stay_as_they_are() {
        let ae = HeaderValue::from_static("gzip");
        let chosen = policy().choose(Some(&ae)).unwrap();
        let mut small = json(100);
        chosen.apply(&mut small);
        assert!(small.headers().get(header::CONTENT_ENCODING).is_none());
        let mut png = json(5000);
        png.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
        chosen.apply(&mut png);
        assert!(png.headers().get(header::CONTENT_ENCODING).is_none());
        let mut done = json(5000);
        done.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("br"));
        chosen.apply(&mut done);
        assert_eq!(done.headers()[header::CONTENT_ENCODING], "br");
        assert!(policy().choose(None).is_none());
        let off = Policy {
            offered: vec![],
            min_bytes: 0,
        };
        assert!(off.choose(Some(&ae)).is_none());
    }

    #[tokio::test]
    async fn each_streamed_frame_is_flushed_through_as_it_passes() {
        for coding in [Coding::Gzip, Coding::Br, Coding::Zstd] {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, axum::Error>>(4);
            let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
            let mut resp = Response::new(Body::new(http_body_util::StreamBody::new(stream)));
            Chosen {
                coding,
                min_bytes: 1024,
            }
            .apply(&mut resp);
            let mut body = resp.into_body();
            tx.send(Ok(Frame::data(Bytes::from_static(b"{\"n\":1}\n"))))
                .await
                .unwrap();
            let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
            // The first message decodes on its own, before the stream ends.
            let partial = match coding {
                Coding::Gzip => {
                    let mut d = flate2::write::GzDecoder::new(Vec::new());
                    d.write_all(&first).unwrap();
                    d.flush().unwrap();
                    d.get_ref().clone()
                }
                Coding::Br => {
                    let mut d = brotli::DecompressorWriter::new(Vec::new(), 4096);
                    d.write_all(&first).unwrap();
                    d.flush().unwrap();
                    d.get_ref().clone()
                }
                _ => {
                    let mut d = zstd::stream::write::Decoder::new(Vec::new()).unwrap();
                    d.write_all(&first).unwrap();
                    d.flush().unwrap();
                    d.get_ref().clone()
                }
            };
            assert_eq!(partial, b"{\"n\":1}\n", "{coding:?}");
            tx.send(Ok(Frame::data(Bytes::from_static(b"{\"n\":2}\n"))))
                .await
                .unwrap();
            drop(tx);
            let mut all = first.to_vec();
            while let Some(f) = body.frame().await {
                all.extend_from_slice(&f.unwrap().into_data().unwrap());
            }
            assert_eq!(decode(coding, &all), b"{\"n\":1}\n{\"n\":2}\n");
        }
    }

    #[test]
    fn media_and_archives_count_as_compressed_already() {
        for ct in [
            "image/png",
            "video/mp4",
            "audio/ogg",
            "application/zip",
            "application/gzip",
            "application/octet-stream",
            "application/grpc+proto",
        ] {
            assert!(precompressed(ct.as_bytes()), "{ct}");
        }
        for ct in [
            "application/json",
            "application/x-ndjson",
            "text/event-stream",
            "text/html; charset=utf-8",
            "image/svg+xml",
            "application/grpc-web+proto",
            "application/grpc-web-text+proto",
            "application/connect+json",
        ] {
            assert!(!precompressed(ct.as_bytes()), "{ct}");
        }
    }
}
