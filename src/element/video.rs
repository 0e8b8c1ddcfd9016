//! The video both elements take: packed 8-bit RGB caps, their pixel layouts, and a mapped
//! frame's first plane as a validated [`FrameRef`] / [`FrameMut`].

use gst_video::prelude::*;

use crate::core::image::{FrameMut, FrameRef, PixelLayout};

/// The packed 8-bit RGB video formats the elements accept, and their pixel layouts.
const PACKED_RGB: [(gst_video::VideoFormat, PixelLayout); 6] = [
    (gst_video::VideoFormat::Rgb, PixelLayout::Rgb),
    (gst_video::VideoFormat::Bgr, PixelLayout::Bgr),
    (gst_video::VideoFormat::Rgba, PixelLayout::Rgba),
    (gst_video::VideoFormat::Bgra, PixelLayout::Bgra),
    (gst_video::VideoFormat::Rgbx, PixelLayout::Rgbx),
    (gst_video::VideoFormat::Bgrx, PixelLayout::Bgrx),
];

/// The `sink` and `src` pad templates of an in-place filter of packed 8-bit RGB video of any
/// size and frame rate.
pub(crate) fn packed_rgb_pad_templates() -> Vec<gst::PadTemplate> {
    let caps = gst_video::VideoCapsBuilder::new()
        .format_list(PACKED_RGB.map(|(format, _)| format))
        .build();
    [
        ("sink", gst::PadDirection::Sink),
        ("src", gst::PadDirection::Src),
    ]
    .into_iter()
    .map(|(name, direction)| {
        gst::PadTemplate::new(name, direction, gst::PadPresence::Always, &caps)
            .expect("static pad template is valid")
    })
    .collect()
}

/// The pixel layout of `format`; `None` for formats outside [`packed_rgb_pad_templates`].
fn pixel_layout(format: gst_video::VideoFormat) -> Option<PixelLayout> {
    PACKED_RGB
        .iter()
        .find(|(f, _)| *f == format)
        .map(|(_, layout)| *layout)
}

/// Layout and stride of the first plane of `info`'s frames; the error says what is wrong.
fn plane_geometry(
    info: &gst_video::VideoInfo,
    stride: i32,
) -> Result<(PixelLayout, usize), String> {
    let layout = pixel_layout(info.format())
        .ok_or_else(|| format!("unsupported format {}", info.format()))?;
    let stride = usize::try_from(stride).map_err(|_| "negative stride".to_owned())?;
    Ok((layout, stride))
}

/// The first plane of a mapped packed-RGB video frame as a [`FrameRef`]; the error says what is
/// wrong with the frame.
pub(crate) fn readable_frame<'a>(
    frame: &'a gst_video::VideoFrameRef<&gst::BufferRef>,
) -> Result<FrameRef<'a>, String> {
    let info = frame.info();
    let (layout, stride) = plane_geometry(info, frame.plane_stride()[0])?;
    let data = frame
        .plane_data(0)
        .map_err(|err| format!("cannot access plane 0: {err}"))?;
    FrameRef::new(
        data,
        info.width() as usize,
        info.height() as usize,
        stride,
        layout,
    )
    .map_err(|err| err.to_string())
}

/// The first plane of a mapped packed-RGB video frame as a writable [`FrameMut`]; the error
/// says what is wrong with the frame.
pub(crate) fn writable_frame<'a>(
    frame: &'a mut gst_video::VideoFrameRef<&mut gst::BufferRef>,
) -> Result<FrameMut<'a>, String> {
    let (width, height) = (frame.width() as usize, frame.height() as usize);
    let (layout, stride) = plane_geometry(frame.info(), frame.plane_stride()[0])?;
    let data = frame
        .plane_data_mut(0)
        .map_err(|err| format!("cannot access plane 0: {err}"))?;
    FrameMut::new(data, width, height, stride, layout).map_err(|err| err.to_string())
}
