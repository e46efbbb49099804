//! Turning SDK errors into the ports' errors: by the service's error code, which every SDK
//! error carries, so one function serves every operation.

use std::error::Error;
use std::fmt::Debug;

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::ports::{BlobError, QueueError, StoreError};

/// Error codes DynamoDB answers when it sheds load; retrying later is the remedy.
const THROTTLING_CODES: &[&str] = &[
    "ThrottlingException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "TransactionConflictException",
];

/// The service's error code, if the service answered at all.
pub(crate) fn code<E, R>(err: &SdkError<E, R>) -> Option<&str>
where
    E: ProvideErrorMetadata,
{
    match err {
        SdkError::ServiceError(e) => e.err().code(),
        _ => None,
    }
}

/// Full detail of an SDK error, sources included, for logs and `Unavailable` messages.
pub(crate) fn detail<E, R>(err: &SdkError<E, R>) -> String
where
    E: Error + 'static,
    R: Debug,
{
    DisplayErrorContext(err).to_string()
}

/// A DynamoDB error as a [`StoreError`]: a failed condition is a `Conflict`, load shedding is
/// `Throttled`, anything else `Unavailable` with what `op` was doing.
pub(crate) fn store_error<E, R>(op: &str, err: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + Error + 'static,
    R: Debug,
{
    match code(&err) {
        Some("ConditionalCheckFailedException") => {
            StoreError::Conflict(format!("{op}: the stored item changed or already exists"))
        }
        Some(c) if THROTTLING_CODES.contains(&c) => StoreError::Throttled,
        _ => StoreError::Unavailable(format!("{op}: {}", detail(&err))),
    }
}

/// An SQS error as a [`QueueError`]: a receipt handle SQS does not accept is `InvalidReceipt`.
pub(crate) fn queue_error<E, R>(op: &str, receipt: Option<&str>, err: SdkError<E, R>) -> QueueError
where
    E: ProvideErrorMetadata + Error + 'static,
    R: Debug,
{
    let invalid_receipt = code(&err).is_some_and(|c| {
        // The JSON protocol answers `ReceiptHandleIsInvalid`; the query protocol prefixed it.
        c.ends_with("ReceiptHandleIsInvalid") || c.ends_with("MessageNotInflight")
    });
    match receipt {
        Some(handle) if invalid_receipt => QueueError::InvalidReceipt(handle.to_owned()),
        _ => QueueError::Unavailable(format!("{op}: {}", detail(&err))),
    }
}

/// An S3 error as a [`BlobError`].
pub(crate) fn blob_error<E, R>(op: &str, key: &str, err: SdkError<E, R>) -> BlobError
where
    E: Error + 'static,
    R: Debug,
{
    BlobError::Unavailable(format!("{op} {key:?}: {}", detail(&err)))
}
