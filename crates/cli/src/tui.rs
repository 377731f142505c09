//! The terminal UI of `rpcctl top` (ratatui on crossterm): the pages read,
//! the services and methods, the endpoints; redrawn whenever a new
//! snapshot arrives. Keys: `q`, Esc or Ctrl-C quit; `s` sorts by rate or
//! by name; `e` shows or hides the endpoints; arrows, PgUp/PgDn, Home/End
//! scroll the services.
//!
//! It runs on a thread of its own (terminal input blocks); snapshots come
//! from the sampling task through a `watch` channel. The terminal is
//! restored however the loop ends (a panic included: `ratatui::init`'s
//! hook).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table, TableState};
use ratatui::{DefaultTerminal, Frame};
use tokio::sync::watch;

use crate::top::{kind, traffic_cells, Order, Snapshot, Traffic};

/// How often keys are looked at while nothing else happens.
const POLL: Duration = Duration::from_millis(100);

#[derive(Debug, PartialEq, Eq)]
enum Step {
    Go,
    Quit,
}

struct Ui {
    snapshot: Option<Snapshot>,
    order: Order,
    endpoints: bool,
    services: TableState,
    interval: Duration,
}

/// Shows snapshots from `snapshots` until a quit key, or `stop`.
pub fn run(
    mut snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    stop: Arc<AtomicBool>,
    interval: Duration,
) -> io::Result<()> {
    let mut terminal = ratatui::try_init()?;
    let mut ui = Ui::new(interval);
    let result = ui.run(&mut terminal, &mut snapshots, &stop);
    ratatui::restore();
    result
}

impl Ui {
    fn new(interval: Duration) -> Ui {
        Ui {
            snapshot: None,
            order: Order::Name,
            endpoints: true,
            services: TableState::default(),
            interval,
        }
    }

    fn run(
        &mut self,
        terminal: &mut DefaultTerminal,
        snapshots: &mut watch::Receiver<Option<Arc<Snapshot>>>,
        stop: &AtomicBool,
    ) -> io::Result<()> {
        let mut dirty = true;
        while !stop.load(Ordering::Relaxed) {
            if snapshots.has_changed().unwrap_or(false) {
                self.snapshot = snapshots.borrow_and_update().as_deref().cloned();
                if let Some(s) = &mut self.snapshot {
                    s.sort(self.order);
                }
                dirty = true;
            }
            if dirty {
                terminal.draw(|frame| self.draw(frame))?;
                dirty = false;
            }
            if !event::poll(POLL)? {
                continue;
            }
            // Resizes and other events redraw too.
            dirty = true;
            if let Event::Key(key) = event::read()? {
                if self.key(key) == Step::Quit {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// What a key does.
    fn key(&mut self, key: KeyEvent) -> Step {
        if key.kind != KeyEventKind::Press {
            return Step::Go;
        }
        let ctrl_c =
            key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            _ if ctrl_c => return Step::Quit,
            KeyCode::Char('q') | KeyCode::Esc => return Step::Quit,
            KeyCode::Char('s') => {
                self.order = match self.order {
                    Order::Name => Order::Rate,
                    Order::Rate => Order::Name,
                };
                if let Some(s) = &mut self.snapshot {
                    s.sort(self.order);
                }
            }
            KeyCode::Char('e') => self.endpoints = !self.endpoints,
            KeyCode::Down => self.services.scroll_down_by(1),
            KeyCode::Up => self.services.scroll_up_by(1),
            KeyCode::PageDown => self.services.scroll_down_by(10),
            KeyCode::PageUp => self.services.scroll_up_by(10),
            KeyCode::Home => self.services.select_first(),
            KeyCode::End => self.services.select_last(),
            _ => {}
        }
        Step::Go
    }

    fn draw(&mut self, frame: &mut Frame) {
        let sources = self.snapshot.as_ref().map_or(1, |s| s.sources.len().max(1)) as u16;
        let endpoints = match (&self.snapshot, self.endpoints) {
            (Some(s), true) if !s.endpoints.is_empty() => (s.endpoints.len() as u16 + 3).min(12),
            _ => 0,
        };
        let [title, pages, services, ends, help] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(sources + 2),
            Constraint::Min(5),
            Constraint::Length(endpoints),
            Constraint::Length(1),
        ])
        .areas(frame.area());
        let order = match self.order {
            Order::Name => "by name",
            Order::Rate => "busiest first",
        };
        frame.render_widget(
            Paragraph::new(Line::from(vec![
                Span::styled("rpcctl top", Style::new().add_modifier(Modifier::BOLD)),
                Span::raw(format!(
                    "  every {:.1} s, rates over the last interval, {order}",
                    self.interval.as_secs_f64()
                )),
            ])),
            title,
        );
        frame.render_widget(
            Paragraph::new(Line::styled(
                "q quit   s sort by rate/name   e endpoints   ↑↓ PgUp PgDn scroll",
                Style::new().fg(Color::DarkGray),
            )),
            help,
        );
        let Some(snap) = &self.snapshot else {
            frame.render_widget(
                Paragraph::new("reading the status pages…").block(Block::bordered()),
                pages,
            );
            return;
        };
        let lines: Vec<Line> = snap
            .sources
            .iter()
            .map(|s| {
                let style = if s.error.is_some() {
                    Style::new().fg(Color::Red)
                } else {
                    Style::new()
                };
                Line::from(vec![
                    Span::styled(s.address.clone(), Style::new().add_modifier(Modifier::BOLD)),
                    Span::raw(format!("  {}  ", kind(s.kind))),
                    Span::styled(s.status(), style),
                ])
            })
            .collect();
        frame.render_widget(
            Paragraph::new(lines).block(Block::bordered().title(" status pages ")),
            pages,
        );

        let header = header_row(&["SERVICE", "METHOD", "SOURCE", "KIND"]);
        let rows = snap.services.iter().map(|r| {
            let method_row = r.method.is_some();
            let mut cells = vec![
                Cell::from(if method_row { "" } else { r.service_text() }.to_string()),
                Cell::from(r.method_text().to_string()),
                Cell::from(r.source.clone()),
                Cell::from(kind(r.kind)),
            ];
            cells.extend(traffic(r.traffic.as_ref()));
            let row = Row::new(cells);
            if method_row {
                row
            } else {
                row.style(Style::new().add_modifier(Modifier::BOLD))
            }
        });
        let widths = [
            Constraint::Fill(1),
            Constraint::Fill(1),
            Constraint::Length(21),
            Constraint::Length(5),
            Constraint::Length(9),
            Constraint::Length(8),
            Constraint::Length(7),
            Constraint::Length(8),
        ];
        let table = Table::new(rows, widths)
            .header(header)
            .block(Block::bordered().title(" services "))
            .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
        frame.render_stateful_widget(table, services, &mut self.services);

        if endpoints > 0 {
            let header = header_row(&[
                "SERVICE",
                "ENDPOINT",
                "SEEN BY",
                "STATE",
                ">IN FLIGHT",
                ">EST(ms)",
                "DRAINING",
            ]);
            let rows = snap.endpoints.iter().map(|e| {
                let cells = e.cells();
                let state = if e.state == "Up" {
                    Color::Green
                } else {
                    Color::Red
                };
                let mut row: Vec<Cell> = cells
                    .into_iter()
                    .enumerate()
                    .map(|(i, text)| match i {
                        3 => Cell::from(text).style(Style::new().fg(state)),
                        4 | 5 => right(text),
                        6 if e.draining => Cell::from(text).style(Style::new().fg(Color::Yellow)),
                        _ => Cell::from(text),
                    })
                    .collect();
                row.extend(traffic(e.traffic.as_ref()));
                Row::new(row)
            });
            let widths = [
                Constraint::Fill(1),
                Constraint::Length(21),
                Constraint::Length(21),
                Constraint::Length(6),
                Constraint::Length(9),
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(9),
                Constraint::Length(8),
                Constraint::Length(7),
                Constraint::Length(8),
            ];
            frame.render_widget(
                Table::new(rows, widths).header(header).block(
                    Block::bordered()
                        .title(" endpoints (as proxies see them; traffic from their LB's page) "),
                ),
                ends,
            );
        }
    }
}

/// A bold header row: `titles`, then the traffic columns; a title
/// starting with `>` is right-aligned (over numbers).
fn header_row(titles: &[&str]) -> Row<'static> {
    let traffic = [">REQ/S", ">ERR/S", ">ERR%", ">P99(ms)"];
    let cells = titles
        .iter()
        .chain(&traffic)
        .map(|t| match t.strip_prefix('>') {
            Some(t) => right(t.to_string()),
            None => Cell::from(t.to_string()),
        });
    Row::new(cells).style(Style::new().add_modifier(Modifier::BOLD))
}

fn right(text: String) -> Cell<'static> {
    Cell::from(Line::from(text).right_aligned())
}

/// The traffic cells, right-aligned, errors in red.
fn traffic(t: Option<&Traffic>) -> Vec<Cell<'static>> {
    let failing = t.and_then(|t| t.errors).is_some_and(|e| e > 0.0);
    traffic_cells(t)
        .into_iter()
        .enumerate()
        .map(|(i, text)| {
            let text = if text.is_empty() {
                "-".to_string()
            } else {
                text
            };
            if failing && (i == 1 || i == 2) {
                right(text).style(Style::new().fg(Color::Red))
            } else {
                right(text)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;
    use rpc_dashboard::SourceKind;

    use super::*;
    use crate::top::{EndpointRow, ServiceRow, SourceRow};

    fn snapshot() -> Snapshot {
        let traffic = |rate: f64, errors: f64| Traffic {
            rate,
            errors: Some(errors),
            error_rate: Some(if rate > 0.0 { errors / rate } else { 0.0 }),
            p99_ms: Some(1.25),
        };
        let row = |service: &str, method: Option<&str>, t: Traffic| ServiceRow {
            service: Some(service.into()),
            method: method.map(str::to_string),
            source: "127.0.0.1:9550".into(),
            kind: SourceKind::Proxy,
            traffic: Some(t),
        };
        Snapshot {
            sources: vec![
                SourceRow {
                    address: "127.0.0.1:9550".into(),
                    kind: SourceKind::Proxy,
                    summary: Some("proxy: 1 client connection open".into()),
                    error: None,
                },
                SourceRow {
                    address: "127.0.0.1:9551".into(),
                    kind: SourceKind::Unknown,
                    summary: None,
                    error: Some("connect: refused".into()),
                },
            ],
            services: vec![
                row("alpha", None, traffic(2.0, 0.0)),
                row("alpha", Some("get"), traffic(2.0, 0.0)),
                row("zeta", None, traffic(300.0, 30.0)),
                row("zeta", Some("put"), traffic(300.0, 30.0)),
            ],
            endpoints: vec![EndpointRow {
                service: "zeta".into(),
                endpoint: "127.0.0.1:5555".into(),
                source: "127.0.0.1:9550".into(),
                state: "Up".into(),
                outstanding: 3,
                latency_ms: 0.5,
                draining: true,
                lb: None,
                traffic: None,
            }],
        }
    }

    /// The screen as text, one line per row.
    fn screen(ui: &mut Ui) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(130, 20)).unwrap();
        terminal.draw(|frame| ui.draw(frame)).unwrap();
        let buffer = terminal.backend().buffer();
        (0..buffer.area.height)
            .map(|y| {
                (0..buffer.area.width)
                    .map(|x| buffer[(x, y)].symbol())
                    .collect::<String>()
            })
            .collect()
    }

    fn line_with<'a>(screen: &'a [String], text: &str) -> (usize, &'a str) {
        screen
            .iter()
            .enumerate()
            .find(|(_, l)| l.contains(text))
            .map(|(i, l)| (i, l.as_str()))
            .unwrap_or_else(|| panic!("no {text:?} on\n{}", screen.join("\n")))
    }

    fn press(ui: &mut Ui, code: KeyCode, modifiers: KeyModifiers) -> Step {
        ui.key(KeyEvent::new(code, modifiers))
    }

    #[test]
    fn draws_pages_services_and_endpoints() {
        let mut ui = Ui::new(Duration::from_secs(1));
        let waiting = screen(&mut ui);
        line_with(&waiting, "reading the status pages");
        ui.snapshot = Some(snapshot());
        let s = screen(&mut ui);
        line_with(&s, "error: connect: refused");
        let (_, zeta) = line_with(&s, "zeta ");
        assert!(
            zeta.contains("300.0") && zeta.contains("30.0") && zeta.contains("10.0%"),
            "{zeta}"
        );
        assert!(zeta.contains("1.25"), "{zeta}");
        let (_, endpoint) = line_with(&s, "127.0.0.1:5555");
        assert!(
            endpoint.contains("Up") && endpoint.contains("yes"),
            "{endpoint}"
        );
        line_with(&s, "q quit");
    }

    #[test]
    fn keys_sort_hide_endpoints_and_quit() {
        let mut ui = Ui::new(Duration::from_secs(1));
        ui.snapshot = Some(snapshot());
        let by_name = screen(&mut ui);
        assert!(line_with(&by_name, "alpha ").0 < line_with(&by_name, "zeta ").0);
        assert_eq!(
            press(&mut ui, KeyCode::Char('s'), KeyModifiers::NONE),
            Step::Go
        );
        let by_rate = screen(&mut ui);
        assert!(line_with(&by_rate, "zeta ").0 < line_with(&by_rate, "alpha ").0);
        line_with(&by_rate, "busiest first");

        press(&mut ui, KeyCode::Char('e'), KeyModifiers::NONE);
        let hidden = screen(&mut ui);
        assert!(!hidden.iter().any(|l| l.contains("127.0.0.1:5555")));

        for (code, modifiers) in [
            (KeyCode::Char('q'), KeyModifiers::NONE),
            (KeyCode::Esc, KeyModifiers::NONE),
            (KeyCode::Char('c'), KeyModifiers::CONTROL),
        ] {
            assert_eq!(press(&mut ui, code, modifiers), Step::Quit);
        }
        assert_eq!(
            press(&mut ui, KeyCode::Char('c'), KeyModifiers::NONE),
            Step::Go
        );
    }
}
