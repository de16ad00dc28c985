//! The PNG bar chart of a report (plotters, bitmap backend, pure-Rust text rendering with a
//! system TrueType font).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::report::{Report, fmt};

const DIRECT: RGBColor = RGBColor(120, 144, 156);
const MESH: RGBColor = RGBColor(230, 126, 34);
const FAMILY: &str = "sans-serif";
/// Tried in order before asking fontconfig.
const FONT_CANDIDATES: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

struct Bar {
    label: String,
    value: f64,
    meshed: bool,
    note: String,
}

struct Panel {
    title: String,
    unit: &'static str,
    bars: Vec<Bar>,
}

/// Finds a TrueType font and registers it as `sans-serif` (once per process).
fn register_font() -> anyhow::Result<PathBuf> {
    let from_fontconfig = || -> Option<PathBuf> {
        let out = Command::new("fc-match")
            .args(["-f", "%{file}", "sans-serif:style=Regular"])
            .output()
            .ok()?;
        let file = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (file.ends_with(".ttf") || file.ends_with(".otf")).then(|| PathBuf::from(file))
    };
    let Some(path) = FONT_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .or_else(from_fontconfig)
    else {
        bail!(
            "no TrueType font found for the chart labels (tried {FONT_CANDIDATES:?} and \
             fc-match); install one: apt-get install fonts-dejavu-core"
        );
    };
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    // plotters keeps fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    if plotters::style::register_font(FAMILY, FontStyle::Normal, bytes).is_err() {
        bail!("{} is not a usable TrueType font", path.display());
    }
    Ok(path)
}

/// Direct and mesh bars of comparison `key`; `name` prefixes both labels.
fn pair(report: &Report, key: &str, name: &str, latency: bool) -> Vec<Bar> {
    let Some(figure) = report.figure(key) else {
        return Vec::new();
    };
    let mut bars = Vec::new();
    if let Some(direct) = figure.direct {
        bars.push(Bar {
            label: format!("{name} direct"),
            value: direct,
            meshed: false,
            note: fmt(direct),
        });
    }
    let note = match (latency, figure.added, figure.ratio_to_direct) {
        (true, Some(added), _) => format!("{} (+{})", fmt(figure.mesh), fmt(added)),
        (false, _, Some(ratio)) => format!("{} ({ratio:.2}x)", fmt(figure.mesh)),
        _ => fmt(figure.mesh),
    };
    bars.push(Bar {
        label: format!("{name} mesh"),
        value: figure.mesh,
        meshed: true,
        note,
    });
    bars
}

fn panels(report: &Report, idle_label: &str) -> Vec<Panel> {
    let mut rate = pair(report, "conn_rate_pooled", "", false);
    if let Some(bar) = rate.last_mut() {
        bar.label = "mesh pooled".into();
    }
    if let Some(mut unpooled) = pair(report, "conn_rate_unpooled", "", false).pop() {
        unpooled.label = "mesh unpooled".into();
        rate.push(unpooled);
    }
    if let Some(bar) = rate.first_mut().filter(|b| !b.meshed) {
        bar.label = "direct".into();
    }
    let memory = [
        ("rss_client_idle", "client idle"),
        ("rss_server_idle", "server idle"),
        ("rss_client_loaded", "client loaded"),
        ("rss_server_loaded", "server loaded"),
    ]
    .into_iter()
    .filter_map(|(key, label)| {
        report.figure(key).map(|f| Bar {
            label: label.into(),
            value: f.mesh,
            meshed: true,
            note: fmt(f.mesh),
        })
    })
    .collect();
    vec![
        Panel {
            title: "Bulk throughput (iperf3), 1 and 8 connections".into(),
            unit: "Gbit/s",
            bars: [
                pair(report, "throughput_1conn", "1x", false),
                pair(report, "throughput_8conn", "8x", false),
            ]
            .into_iter()
            .flatten()
            .collect(),
        },
        Panel {
            title: "1 KiB request/response round trip".into(),
            unit: "µs",
            bars: [
                pair(report, "latency_p50", "p50", true),
                pair(report, "latency_p99", "p99", true),
            ]
            .into_iter()
            .flatten()
            .collect(),
        },
        Panel {
            title: "New connections per second (connect, 1-byte echo, close)".into(),
            unit: "conn/s",
            bars: rate,
        },
        Panel {
            title: format!("Proxy RSS, idle and with {idle_label} open connections"),
            unit: "MiB",
            bars: memory,
        },
    ]
}

/// Draws the report as a 2x2 grid of bar charts into the PNG at `path`. `idle_label` is
/// the number of idle connections the memory panel was measured with.
pub fn draw(report: &Report, path: &Path, idle_label: &str) -> anyhow::Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, (1400, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        "netbench: pod to pod over direct TCP (grey) vs through two ztunnel proxies over HBONE (orange)",
        (FAMILY, 22),
    )?;
    for (area, panel) in root
        .split_evenly((2, 2))
        .iter()
        .zip(panels(report, idle_label))
    {
        draw_panel(area, &panel)?;
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let top = panel.bars.iter().map(|b| b.value).fold(0.0, f64::max);
    let top = if top > 0.0 { top * 1.2 } else { 1.0 };
    let count = panel.bars.len();
    if count == 0 {
        return Ok(());
    }
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FAMILY, 18))
        .margin(12)
        .x_label_area_size(34)
        .y_label_area_size(70)
        // A segmented `0..n` range has n + 1 segments: one per bar.
        .build_cartesian_2d((0..count - 1).into_segmented(), 0.0..top)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let labels: Vec<&str> = panel.bars.iter().map(|b| b.label.as_str()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE)
        .x_labels(count)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).map(|s| s.to_string()).unwrap_or_default(),
            _ => String::new(),
        })
        .y_label_formatter(&|v| fmt(*v))
        .y_desc(panel.unit)
        .label_style((FAMILY, 14))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .draw_series(panel.bars.iter().enumerate().map(|(i, bar)| {
            let color = if bar.meshed { MESH } else { DIRECT };
            let mut rect = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), bar.value),
                ],
                color.filled(),
            );
            rect.set_margin(0, 0, 18, 18);
            rect
        }))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let style = TextStyle::from((FAMILY, 15).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
    chart
        .draw_series(panel.bars.iter().enumerate().map(|(i, bar)| {
            Text::new(
                bar.note.clone(),
                (SegmentValue::CenterOf(i), bar.value),
                style.clone(),
            )
        }))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
