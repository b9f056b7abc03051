//! How [`SyncMessage`]s travel over libp2p request-response streams: one
//! message per stream and direction, the whole stream (the writer closes
//! it), at most the limit's message size.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

use crate::sync::{SyncLimits, SyncMessage, MAX_NON_RECORD_BYTES};
use crate::MAX_MESSAGE_BYTES;

/// The limits for the given configuration values; the message size is what
/// `max_records` records of `max_record_len` bytes need, with room for the
/// most ranges, lists and wants a message may carry
/// ([`MAX_NON_RECORD_BYTES`]), capped by [`MAX_MESSAGE_BYTES`].
pub(crate) fn limits(max_records: usize, max_record_len: usize) -> SyncLimits {
    // Counts travel as u16.
    let max_records = max_records.min(usize::from(u16::MAX));
    let full = max_records
        .saturating_mul(max_record_len.saturating_add(4))
        .saturating_add(MAX_NON_RECORD_BYTES);
    SyncLimits {
        max_records,
        max_record_len,
        max_message_bytes: full.min(MAX_MESSAGE_BYTES),
    }
}

/// The request-response codec of the sync protocol.
#[derive(Debug, Clone)]
pub(crate) struct SyncCodec {
    pub(crate) limits: SyncLimits,
}

impl SyncCodec {
    async fn read<T: AsyncRead + Unpin + Send>(&self, io: &mut T) -> io::Result<SyncMessage> {
        let max = self.limits.max_message_bytes;
        let mut buf = Vec::new();
        io.take(u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1))
            .read_to_end(&mut buf)
            .await?;
        if buf.len() > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("sync message over {max} bytes"),
            ));
        }
        SyncMessage::decode(&buf, &self.limits)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    async fn write<T: AsyncWrite + Unpin + Send>(
        &self,
        io: &mut T,
        msg: SyncMessage,
    ) -> io::Result<()> {
        io.write_all(&msg.encode()).await?;
        io.close().await
    }
}

impl libp2p::request_response::Codec for SyncCodec {
    type Protocol = StreamProtocol;
    type Request = SyncMessage;
    type Response = SyncMessage;

    async fn read_request<T>(&mut self, _: &Self::Protocol, io: &mut T) -> io::Result<SyncMessage>
    where
        T: AsyncRead + Unpin + Send,
    {
        self.read(io).await
    }

    async fn read_response<T>(&mut self, _: &Self::Protocol, io: &mut T) -> io::Result<SyncMessage>
    where
        T: AsyncRead + Unpin + Send,
    {
        self.read(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        req: SyncMessage,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.write(io, req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        res: SyncMessage,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.write(io, res).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_the_config_and_the_hard_cap() {
        let l = limits(3, 4);
        assert_eq!((l.max_records, l.max_record_len), (3, 4));
        assert!(l.max_message_bytes >= 3 * 8);
        assert_eq!(
            limits(100_000, 16 * 1024).max_message_bytes,
            MAX_MESSAGE_BYTES
        );
    }

    #[test]
    fn the_codec_reads_what_it_writes_and_refuses_oversize() {
        futures::executor::block_on(async {
            let codec = SyncCodec {
                limits: limits(4, 16),
            };
            let msg = SyncMessage {
                records: vec![b"abc".to_vec()],
                ..SyncMessage::default()
            };
            let mut wire = futures::io::Cursor::new(Vec::new());
            codec.write(&mut wire, msg.clone()).await.unwrap();
            let bytes = wire.into_inner();
            let got = codec
                .read(&mut futures::io::Cursor::new(bytes))
                .await
                .unwrap();
            assert_eq!(got, msg);
            let mut small = codec.clone();
            small.limits.max_message_bytes = 4;
            let err = small
                .read(&mut futures::io::Cursor::new(msg.encode()))
                .await
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            let garbage = vec![0xffu8; 40];
            assert!(codec
                .read(&mut futures::io::Cursor::new(garbage))
                .await
                .is_err());
        });
    }
}
