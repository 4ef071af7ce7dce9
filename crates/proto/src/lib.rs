//! The wire contract between UniLink services, generated from `proto/`.
//!
//! Each service's API lives in `unilink::<service>::v1`; re-exported here as
//! `auth`, `profile`, `signaling` and `notification`. No other crate writes a
//! copy of these types.

#![allow(missing_debug_implementations, clippy::large_enum_variant)]

pub mod unilink {
    pub mod auth {
        pub mod v1 {
            tonic::include_proto!("unilink.auth.v1");
        }
    }
    pub mod profile {
        pub mod v1 {
            tonic::include_proto!("unilink.profile.v1");
        }
    }
    pub mod signaling {
        pub mod v1 {
            tonic::include_proto!("unilink.signaling.v1");
        }
    }
    pub mod notification {
        pub mod v1 {
            tonic::include_proto!("unilink.notification.v1");
        }
    }
}

pub use unilink::{
    auth::v1 as auth, notification::v1 as notification, profile::v1 as profile, signaling::v1 as signaling,
};

/// The domain's call status on the wire and back (`UNSPECIFIED` is no status).
impl From<unilink_domain::CallStatus> for signaling::CallStatus {
    fn from(status: unilink_domain::CallStatus) -> Self {
        use unilink_domain::CallStatus as Domain;
        match status {
            Domain::Pending => signaling::CallStatus::Pending,
            Domain::Ongoing => signaling::CallStatus::Ongoing,
            Domain::Completed => signaling::CallStatus::Completed,
            Domain::Rejected => signaling::CallStatus::Rejected,
            Domain::Missed => signaling::CallStatus::Missed,
            Domain::Cancelled => signaling::CallStatus::Cancelled,
        }
    }
}

impl TryFrom<signaling::CallStatus> for unilink_domain::CallStatus {
    type Error = unilink_domain::UnknownCallStatus;

    fn try_from(status: signaling::CallStatus) -> Result<Self, Self::Error> {
        use unilink_domain::CallStatus as Domain;
        Ok(match status {
            signaling::CallStatus::Pending => Domain::Pending,
            signaling::CallStatus::Ongoing => Domain::Ongoing,
            signaling::CallStatus::Completed => Domain::Completed,
            signaling::CallStatus::Rejected => Domain::Rejected,
            signaling::CallStatus::Missed => Domain::Missed,
            signaling::CallStatus::Cancelled => Domain::Cancelled,
            signaling::CallStatus::Unspecified => {
                return Err(unilink_domain::UnknownCallStatus(status.as_str_name().to_owned()));
            }
        })
    }
}

#[cfg(test)]
mod call_status_tests {
    use super::signaling::CallStatus as Wire;
    use unilink_domain::CallStatus;

    #[test]
    fn every_call_status_crosses_the_wire_and_back() {
        for status in CallStatus::ALL {
            let wire = Wire::from(status);
            assert_eq!(CallStatus::try_from(wire), Ok(status));
            // Names line up: CALL_STATUS_PENDING is `pending`.
            assert_eq!(
                wire.as_str_name(),
                format!("CALL_STATUS_{}", status.as_str().to_uppercase())
            );
        }
        assert!(CallStatus::try_from(Wire::Unspecified).is_err());
    }
}

/// Converts between `chrono` and protobuf timestamps without a dependency on chrono here.
pub use prost_types::Timestamp;

/// Protobuf timestamp of a UTC time.
pub fn timestamp(time: chrono::DateTime<chrono::Utc>) -> Timestamp {
    Timestamp {
        seconds: time.timestamp(),
        nanos: time.timestamp_subsec_nanos() as i32,
    }
}

/// The protobuf codec of every generated client and server: prost, with
/// 256-byte encode/decode buffers instead of tonic's 8 KiB. Every client
/// WebSocket is a long-lived stream holding one of each on both ends, so the
/// default would cost ~32 KiB per socket (1 KiB buffers still cost 4 KiB,
/// a quarter of the per-socket target); buffers grow for larger messages.
pub mod codec {
    use std::marker::PhantomData;

    use tonic::codec::{BufferSettings, Codec};
    use tonic_prost::{ProstDecoder, ProstEncoder};

    const BUFFER: usize = 256;
    const YIELD_THRESHOLD: usize = 32 * 1024;

    #[derive(Debug, Clone, Copy)]
    pub struct CompactCodec<T, U>(PhantomData<(T, U)>);

    impl<T, U> Default for CompactCodec<T, U> {
        fn default() -> Self {
            CompactCodec(PhantomData)
        }
    }

    impl<T, U> Codec for CompactCodec<T, U>
    where
        T: prost::Message + Send + 'static,
        U: prost::Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = ProstEncoder<T>;
        type Decoder = ProstDecoder<U>;

        fn encoder(&mut self) -> Self::Encoder {
            ProstEncoder::new(BufferSettings::new(BUFFER, YIELD_THRESHOLD))
        }

        fn decoder(&mut self) -> Self::Decoder {
            ProstDecoder::new(BufferSettings::new(BUFFER, YIELD_THRESHOLD))
        }
    }
}

/// UTC time of a protobuf timestamp; `None` when out of range.
pub fn from_timestamp(ts: &Timestamp) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(ts.seconds, ts.nanos.max(0) as u32)
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_round_trip() {
        let now = chrono::Utc::now();
        assert_eq!(super::from_timestamp(&super::timestamp(now)), Some(now));
    }
}
