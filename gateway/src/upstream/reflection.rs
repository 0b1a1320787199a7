//! Descriptors from a backend's gRPC server reflection service.
//!
//! Speaks `grpc.reflection.v1` and falls back to `v1alpha` (older servers,
//! and grpc-go before 1.58, serve only that). The two versions share their
//! messages, so they are declared once here with prost rather than compiled
//! from reflection.proto at run time.

use std::collections::{HashSet, VecDeque};
use std::marker::PhantomData;
use std::time::Duration;

use bytes::{Buf, BufMut};
use http::uri::PathAndQuery;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::Status;

#[derive(Clone, PartialEq, Message)]
pub struct ServerReflectionRequest {
    #[prost(string, tag = "1")]
    pub host: String,
    #[prost(oneof = "MessageRequest", tags = "3, 4, 7")]
    pub message_request: Option<MessageRequest>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum MessageRequest {
    #[prost(string, tag = "3")]
    FileByFilename(String),
    #[prost(string, tag = "4")]
    FileContainingSymbol(String),
    #[prost(string, tag = "7")]
    ListServices(String),
}

#[derive(Clone, PartialEq, Message)]
pub struct ServerReflectionResponse {
    #[prost(oneof = "MessageResponse", tags = "4, 6, 7")]
    pub message_response: Option<MessageResponse>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum MessageResponse {
    #[prost(message, tag = "4")]
    FileDescriptorResponse(FileDescriptorResponse),
    #[prost(message, tag = "6")]
    ListServicesResponse(ListServiceResponse),
    #[prost(message, tag = "7")]
    ErrorResponse(ErrorResponse),
}

#[derive(Clone, PartialEq, Message)]
pub struct FileDescriptorResponse {
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub file_descriptor_proto: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ListServiceResponse {
    #[prost(message, repeated, tag = "1")]
    pub service: Vec<ServiceResponse>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ServiceResponse {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct ErrorResponse {
    #[prost(int32, tag = "1")]
    pub error_code: i32,
    #[prost(string, tag = "2")]
    pub error_message: String,
}

/// A tonic codec for prost-generated messages (tonic 0.14 moved its own to a
/// separate crate; this is the dozen lines the gateway needs).
pub(crate) struct ProstCodec<E, D>(pub(crate) PhantomData<(E, D)>);

impl<E, D> Codec for ProstCodec<E, D>
where
    E: Message + Send + 'static,
    D: Message + Default + Send + 'static,
{
    type Encode = E;
    type Decode = D;
    type Encoder = ProstEncoder<E>;
    type Decoder = ProstDecoder<D>;
    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder(PhantomData)
    }
    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder(PhantomData)
    }
}

pub(crate) struct ProstEncoder<E>(PhantomData<E>);
impl<E: Message> Encoder for ProstEncoder<E> {
    type Item = E;
    type Error = Status;
    fn encode(&mut self, item: E, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        let mut buf = Vec::with_capacity(item.encoded_len());
        item.encode(&mut buf)
            .map_err(|e| Status::internal(e.to_string()))?;
        dst.put_slice(&buf);
        Ok(())
    }
}

pub(crate) struct ProstDecoder<D>(PhantomData<D>);
impl<D: Message + Default> Decoder for ProstDecoder<D> {
    type Item = D;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        D::decode(bytes)
            .map(Some)
            .map_err(|e| Status::internal(format!("the reply does not decode: {e}")))
    }
}

/// What a backend's reflection service told us.
#[derive(Debug, Clone, Default)]
pub struct Reflected {
    /// Services it serves (reflection and health excluded).
    pub services: Vec<String>,
    /// Encoded FileDescriptorProtos: the services' files and all their imports.
    pub files: Vec<Vec<u8>>,
}

/// Fetches the services and their files, v1 first, then v1alpha.
pub async fn fetch(channel: Channel, timeout: Duration) -> Result<Reflected, Status> {
    match tokio::time::timeout(timeout, fetch_version(channel.clone(), "v1")).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => {
            tokio::time::timeout(timeout, fetch_version(channel, "v1alpha"))
                .await
                .map_err(|_| Status::deadline_exceeded("server reflection timed out"))?
        }
        Ok(Err(s)) => Err(s),
        Err(_) => Err(Status::deadline_exceeded("server reflection timed out")),
    }
}

/// One request per stream keeps this simple; reflection runs at reload time,
/// not per request.
async fn ask(
    channel: Channel,
    version: &str,
    request: MessageRequest,
) -> Result<MessageResponse, Status> {
    let mut client = tonic::client::Grpc::new(channel);
    client
        .ready()
        .await
        .map_err(|e| Status::unavailable(format!("connecting: {e}")))?;
    let path = PathAndQuery::try_from(format!(
        "/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
    ))
    .expect("static path");
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut stream = client
        .streaming(
            tonic::Request::new(tokio_stream::once(req)),
            path,
            ProstCodec::<ServerReflectionRequest, ServerReflectionResponse>(PhantomData),
        )
        .await?
        .into_inner();
    let reply = stream
        .message()
        .await?
        .ok_or_else(|| Status::internal("reflection stream ended without a reply"))?;
    match reply.message_response {
        Some(MessageResponse::ErrorResponse(e)) => Err(Status::new(
            tonic::Code::from_i32(e.error_code),
            e.error_message,
        )),
        Some(r) => Ok(r),
        None => Err(Status::internal("empty reflection reply")),
    }
}

async fn fetch_version(channel: Channel, version: &str) -> Result<Reflected, Status> {
    let MessageResponse::ListServicesResponse(list) = ask(
        channel.clone(),
        version,
        MessageRequest::ListServices(String::new()),
    )
    .await?
    else {
        return Err(Status::internal(
            "reflection answered list_services with something else",
        ));
    };
    let services: Vec<String> = list
        .service
        .into_iter()
        .map(|s| s.name)
        .filter(|n| !n.starts_with("grpc.reflection.") && !n.starts_with("grpc.health."))
        .collect();
    let mut out = Reflected {
        services: services.clone(),
        files: Vec::new(),
    };
    // The reply to file_containing_symbol carries the file and, per the
    // spec, usually its imports; ask for any import still missing by name.
    let mut seen: HashSet<String> = HashSet::new();
    let mut wanted: VecDeque<MessageRequest> = services
        .into_iter()
        .map(MessageRequest::FileContainingSymbol)
        .collect();
    while let Some(req) = wanted.pop_front() {
        let MessageResponse::FileDescriptorResponse(files) =
            ask(channel.clone(), version, req).await?
        else {
            return Err(Status::internal(
                "reflection answered a file request with something else",
            ));
        };
        for bytes in files.file_descriptor_proto {
            let fd = prost_types::FileDescriptorProto::decode(bytes.as_slice())
                .map_err(|e| Status::internal(format!("bad descriptor from reflection: {e}")))?;
            let name = fd.name.clone().unwrap_or_default();
            if !seen.insert(name) {
                continue;
            }
            for dep in fd.dependency {
                if !seen.contains(&dep) {
                    wanted.push_back(MessageRequest::FileByFilename(dep));
                }
            }
            out.files.push(bytes);
        }
    }
    Ok(out)
}
