//! What `ibkit inspect` shows: the image as `check` describes it (input,
//! backing chain, partitions, volumes, mounts, OS) and the problems met
//! reading it, without running any rule.

use std::path::Path;

use ibkit_image::inspect::{InspectOptions, Inspection};
use serde::{Deserialize, Serialize};

use crate::context::Context;
use crate::engine::{ImageInfo, image_info};

/// An image described without checking it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ImageSummary {
    /// The image, as a report's `image` describes it.
    pub image: ImageInfo,
    /// Problems reading the image that did not stop the inspection.
    pub notes: Vec<String>,
}

/// Describe an inspected image. Only `/etc/os-release` is read beyond what
/// the inspection assembled.
pub fn summarize(insp: &Inspection) -> ImageSummary {
    let cx = Context::new(&insp.guest, Some(insp), None);
    // The notes are the inspection's: no rule runs, and an unreadable
    // os-release shows as an unknown OS.
    let notes = insp.notes.clone();
    ImageSummary {
        image: image_info(insp, &cx),
        notes,
    }
}

/// Open the image (or root directory) at `path` and describe it.
pub fn summarize_image(
    path: &Path,
    opts: &InspectOptions,
) -> Result<ImageSummary, ibkit_image::ImageError> {
    Ok(summarize(&ibkit_image::inspect(path, opts)?))
}
