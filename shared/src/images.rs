//! Checks of image bytes before they are stored.
