//! `ibkit inspect`'s output: an [`ImageSummary`] as text or JSON.
//!
//! Text: `image: PATH (FORMAT)`, a `backing:` line per backing file,
//! `virtual size:`, `partition table:` with one line per volume (name,
//! type, size in bytes, `UUID=`, `LABEL=`), a `mount:` line per mount,
//! `os:`, and a `note:` line per problem met reading the image.
//!
//! JSON: `{"image": ..., "notes": [...]}` with the `image` object of the
//! check report; keys are sorted at every level, as `inspect` has always
//! printed them.

use ibkit_rules::ImageSummary;

/// The summary as text, ending with a newline.
pub fn render_summary_text(summary: &ImageSummary) -> String {
    let i = &summary.image;
    let mut s = format!("image: {} ({})\n", i.path, i.format);
    for l in i.layers.iter().skip(1) {
        s.push_str(&format!("  backing: {l}\n"));
    }
    if let Some(v) = i.virtual_size {
        s.push_str(&format!("virtual size: {v} bytes\n"));
    }
    s.push_str(&format!(
        "partition table: {}\n",
        i.partition_table.as_deref().unwrap_or("none")
    ));
    for v in &i.volumes {
        s.push_str(&format!(
            "  {:<12} {:<12} {:>12}  {}{}\n",
            v.name,
            v.kind,
            v.size,
            v.uuid
                .as_deref()
                .map(|u| format!("UUID={u}"))
                .unwrap_or_default(),
            v.label
                .as_deref()
                .map(|l| format!(" LABEL={l}"))
                .unwrap_or_default()
        ));
    }
    for m in &i.mounts {
        s.push_str(&format!(
            "mount: {:<12} {} ({})\n",
            m.point, m.volume, m.fs_type
        ));
    }
    s.push_str(&format!("os: {}\n", i.os.as_deref().unwrap_or("unknown")));
    for n in &summary.notes {
        s.push_str(&format!("note: {n}\n"));
    }
    s
}

/// The summary as pretty-printed JSON with sorted keys, ending with a newline.
pub fn render_summary_json(summary: &ImageSummary) -> String {
    // Through `Value`: its maps sort their keys.
    let v = serde_json::json!({ "image": summary.image, "notes": summary.notes });
    let mut s = serde_json::to_string_pretty(&v).expect("a JSON value always serializes");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use ibkit_rules::engine::{ImageInfo, MountSummary, VolumeSummary};

    fn summary() -> ImageSummary {
        ImageSummary {
            image: ImageInfo {
                path: "img.qcow2".into(),
                format: "qcow2".into(),
                layers: vec!["/x/img.qcow2".into(), "/x/base.qcow2".into()],
                virtual_size: Some(1 << 30),
                partition_table: Some("gpt".into()),
                volumes: vec![
                    VolumeSummary {
                        name: "p1".into(),
                        kind: "ext4".into(),
                        size: 1000,
                        uuid: Some("u-1".into()),
                        label: Some("root".into()),
                    },
                    VolumeSummary {
                        name: "p2".into(),
                        kind: "swap".into(),
                        size: 20,
                        uuid: None,
                        label: None,
                    },
                ],
                mounts: vec![MountSummary {
                    point: "/".into(),
                    volume: "p1".into(),
                    fs_type: "ext4".into(),
                }],
                os: Some("Debian GNU/Linux 12 (bookworm)".into()),
            },
            notes: vec!["fstab: /var is not on this disk".into()],
        }
    }

    #[test]
    fn text_layout() {
        assert_eq!(
            render_summary_text(&summary()),
            "image: img.qcow2 (qcow2)\n  backing: /x/base.qcow2\nvirtual size: 1073741824 bytes\n\
             partition table: gpt\n\
             \x20 p1           ext4                 1000  UUID=u-1 LABEL=root\n\
             \x20 p2           swap                   20  \n\
             mount: /            p1 (ext4)\n\
             os: Debian GNU/Linux 12 (bookworm)\n\
             note: fstab: /var is not on this disk\n"
        );
        let empty = ImageSummary::default();
        assert_eq!(
            render_summary_text(&empty),
            "image:  ()\npartition table: none\nos: unknown\n"
        );
    }

    #[test]
    fn json_keys_are_sorted() {
        let j = render_summary_json(&summary());
        assert!(j.ends_with("}\n"));
        let keys: Vec<usize> = [
            "\"format\"",
            "\"layers\"",
            "\"mounts\"",
            "\"os\"",
            "\"path\"",
        ]
        .iter()
        .map(|k| j.find(k).expect(k))
        .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{j}");
        assert!(j.find("\"image\"") < j.find("\"notes\""));
        let v: serde_json::Value = serde_json::from_str(&j).expect("json");
        assert_eq!(v["image"]["volumes"][1].get("uuid"), None);
        assert_eq!(v["notes"][0], "fstab: /var is not on this disk");
    }
}
