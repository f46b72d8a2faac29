//! Styles; with NO_COLOR set (https://no-color.org) no colour is used at
//! all, only bold and reverse video, and the chart series differ by marker.
use ratatui::{
    style::{Color, Modifier, Style},
    symbols::Marker,
};

/// True when NO_COLOR is set to a non-empty value.
pub fn no_color_from_env() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

#[derive(Clone, Copy, Debug)]
pub struct Theme {
    pub color: bool,
}

/// A chart series: how it is drawn and its caption.
#[derive(Clone, Copy, Debug)]
pub struct Series {
    pub style: Style,
    pub marker: Marker,
    /// The caption's sample of the line.
    pub sample: &'static str,
}

impl Theme {
    pub fn new(no_color: bool) -> Theme {
        Theme { color: !no_color }
    }

    fn fg(&self, c: Color) -> Style {
        if self.color {
            Style::new().fg(c)
        } else {
            Style::new()
        }
    }

    pub fn plain(&self) -> Style {
        Style::new()
    }

    pub fn bold(&self) -> Style {
        Style::new().add_modifier(Modifier::BOLD)
    }

    pub fn title(&self) -> Style {
        self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
    }

    pub fn dim(&self) -> Style {
        self.fg(Color::DarkGray)
    }

    pub fn good(&self) -> Style {
        self.fg(Color::Green)
    }

    pub fn bad(&self) -> Style {
        self.fg(Color::Red)
    }

    pub fn warn(&self) -> Style {
        self.fg(Color::Yellow)
    }

    pub fn accent(&self) -> Style {
        self.fg(Color::Magenta)
    }

    pub fn key(&self) -> Style {
        self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
    }

    pub fn border(&self) -> Style {
        self.fg(Color::DarkGray)
    }

    pub fn focus_border(&self) -> Style {
        self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
    }

    /// The state badge in the header.
    pub fn badge(&self, c: Color) -> Style {
        if self.color {
            Style::new().fg(Color::Black).bg(c).add_modifier(Modifier::BOLD)
        } else {
            Style::new().add_modifier(Modifier::REVERSED | Modifier::BOLD)
        }
    }

    pub fn gauge(&self) -> Style {
        self.fg(Color::Cyan)
    }

    pub fn sparkline(&self) -> Style {
        self.fg(Color::Cyan)
    }

    fn series(&self, c: Color, alt: Marker, sample: &'static str) -> Series {
        if self.color {
            Series {
                style: Style::new().fg(c),
                marker: Marker::Braille,
                sample: "━",
            }
        } else {
            Series {
                style: Style::new(),
                marker: alt,
                sample,
            }
        }
    }

    pub fn steps(&self) -> Series {
        self.series(Color::DarkGray, Marker::Braille, "⠒")
    }

    pub fn train_loss(&self) -> Series {
        self.series(Color::Cyan, Marker::Block, "█")
    }

    pub fn val_loss(&self) -> Series {
        self.series(Color::Yellow, Marker::Dot, "•")
    }

    pub fn top1(&self) -> Series {
        self.series(Color::Green, Marker::Block, "█")
    }

    pub fn top5(&self) -> Series {
        self.series(Color::Blue, Marker::Dot, "•")
    }

    pub fn lr_line(&self) -> Series {
        self.series(Color::Magenta, Marker::Braille, "⠒")
    }

    pub fn decay_mark(&self) -> Series {
        let mut s = self.series(Color::Yellow, Marker::Block, "█");
        s.marker = Marker::Block;
        s
    }
}
