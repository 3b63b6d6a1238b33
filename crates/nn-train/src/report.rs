//! A run's history as files: a CSV table ([`write_history_csv`]) and an SVG chart of
//! loss and accuracy per epoch ([`plot_history`]).

use crate::trainer::EpochStats;
use crate::TrainError;
use std::path::Path;

/// The CSV columns, in order.
const COLUMNS: [&str; 12] = [
    "epoch",
    "complete",
    "iterations",
    "samples",
    "error_sum",
    "mean_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "images_per_sec",
    "seconds",
    "learning_rate",
];

/// Writes per-epoch figures as CSV, a header then one row per epoch (empty cells for
/// figures an epoch does not have, such as validation without a validation set).
///
/// # Errors
/// [`TrainError::Io`] naming `path` when it cannot be written.
pub fn write_history_csv(path: &Path, history: &[EpochStats]) -> Result<(), TrainError> {
    let io_error = |source| TrainError::Io { path: path.to_path_buf(), source };
    let csv_error = |e: csv::Error| io_error(e.into());
    let mut writer = csv::Writer::from_path(path).map_err(csv_error)?;
    writer.write_record(COLUMNS).map_err(csv_error)?;
    let cell = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
    for s in history {
        let validation = s.validation.as_ref();
        writer
            .write_record([
                s.epoch.to_string(),
                s.complete.to_string(),
                s.iterations.to_string(),
                s.samples.to_string(),
                s.error_sum.to_string(),
                s.mean_loss.to_string(),
                cell(s.accuracy),
                cell(validation.map(|v| v.mean_loss)),
                cell(validation.and_then(|v| v.accuracy)),
                s.images_per_sec.to_string(),
                s.seconds.to_string(),
                s.learning_rate.to_string(),
            ])
            .map_err(csv_error)?;
    }
    writer.flush().map_err(io_error)
}

/// Draws loss (left) and accuracy (right) per epoch, training and validation, as an
/// SVG file of 900 × 400 pixels.
///
/// # Errors
/// [`TrainError::Io`] naming `path` when the chart cannot be drawn or written.
pub fn plot_history(path: &Path, history: &[EpochStats]) -> Result<(), TrainError> {
    draw(path, history).map_err(|e| TrainError::Io { path: path.to_path_buf(), source: std::io::Error::other(e) })
}

/// One panel's data: the training and the validation series.
struct Panel {
    caption: &'static str,
    train: Vec<(f64, f64)>,
    validation: Vec<(f64, f64)>,
    y_range: std::ops::Range<f64>,
    legend: plotters::chart::SeriesLabelPosition,
}

fn draw(path: &Path, history: &[EpochStats]) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use plotters::prelude::*;
    let series = |f: &dyn Fn(&EpochStats) -> Option<f64>| -> Vec<(f64, f64)> {
        history.iter().filter_map(|s| f(s).map(|v| (s.epoch as f64 + 1.0, v))).collect()
    };
    let loss = series(&|s| Some(s.mean_loss));
    let val_loss = series(&|s| s.validation.as_ref().map(|v| v.mean_loss));
    let max_loss = loss.iter().chain(&val_loss).map(|p| p.1).filter(|v| v.is_finite()).fold(0.0, f64::max) * 1.1;
    let acc = series(&|s| s.accuracy.map(|a| 100.0 * a));
    let val_acc = series(&|s| s.validation.as_ref().and_then(|v| v.accuracy).map(|a| 100.0 * a));
    let min_acc = acc.iter().chain(&val_acc).map(|p| p.1).fold(100.0, f64::min);
    let panels = [
        Panel {
            caption: "loss per sample",
            train: loss,
            validation: val_loss,
            y_range: 0.0..max_loss.max(1e-3),
            legend: SeriesLabelPosition::UpperRight,
        },
        Panel {
            caption: "accuracy (%)",
            train: acc,
            validation: val_acc,
            y_range: (min_acc - 2.0).max(0.0)..100.0,
            legend: SeriesLabelPosition::LowerRight,
        },
    ];

    let root = SVGBackend::new(path, (900, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(450);
    let epochs = history.len() as f64;
    for (area, panel) in [left, right].iter().zip(panels) {
        let mut chart = ChartBuilder::on(area)
            .caption(panel.caption, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0.5..epochs + 0.5, panel.y_range)?;
        chart.configure_mesh().x_desc("epoch").draw()?;
        for (points, colour, label) in [(panel.train, BLUE, "train"), (panel.validation, RED, "validation")] {
            chart
                .draw_series(LineSeries::new(points, colour))?
                .label(label)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 15, y)], colour));
        }
        chart
            .configure_series_labels()
            .position(panel.legend)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Evaluation;

    fn history() -> Vec<EpochStats> {
        (0..3)
            .map(|epoch| EpochStats {
                epoch,
                complete: true,
                iterations: 10 * (epoch as u64 + 1),
                samples: 640,
                error_sum: 12.5,
                mean_loss: 1.0 / (epoch as f64 + 1.0),
                accuracy: Some(0.5 + 0.1 * epoch as f64),
                validation: (epoch > 0).then_some(Evaluation {
                    error_sum: 75.0,
                    mean_loss: 0.75,
                    accuracy: Some(0.625),
                    samples: 100,
                    confusion: None,
                }),
                images_per_sec: 1000.0,
                seconds: 0.64,
                learning_rate: 0.01,
                skipped_batches: 0,
            })
            .collect()
    }

    #[test]
    fn csv_has_a_header_and_a_row_per_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.csv");
        write_history_csv(&path, &history()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], COLUMNS.join(","));
        assert_eq!(lines[1], "0,true,10,640,12.5,1,0.5,,,1000,0.64,0.01");
        assert_eq!(lines[3], "2,true,30,640,12.5,0.3333333333333333,0.7,0.75,0.625,1000,0.64,0.01");
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn chart_is_an_svg_with_both_panels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("training.svg");
        plot_history(&path, &history()).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40.min(svg.len())]);
        assert!(svg.contains("loss per sample") && svg.contains("accuracy (%)"));
    }

    #[test]
    fn unwritable_paths_are_named_in_the_error() {
        let path = Path::new("/nonexistent-dir/history.csv");
        let err = write_history_csv(path, &history()).unwrap_err();
        assert!(err.to_string().contains("/nonexistent-dir/history.csv"), "{err}");
    }
}
