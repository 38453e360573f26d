//! Reactions embedded in an activity: each reaction whose `user_id` is a valid id gets its
//! user as `user`, in place of an existing `user` value or right after the `user_id`; their
//! children are reactions too.

use super::{Scan, Scanner, Site, SiteKind};
use crate::id::is_valid_id;
use crate::shape::Depth;

impl Scanner<'_> {
    /// Where the value under the cursor starts (or, after a value, where it ended) in the
    /// page's buffer.
    fn out_pos(&self) -> usize {
        if self.copy {
            self.out.len()
        } else {
            // Only a document without white space is kept from a scan that does not copy.
            self.base + self.pos
        }
    }

    /// An object of reactions (`latest_reactions` or `own_reactions` of an activity, or
    /// `latest_children` or `own_children` of a reaction): kind → list of reactions. Whatever
    /// else it holds is copied (and searched as deep as the activity is).
    #[inline(never)]
    pub(super) fn reactions(&mut self, sites: &mut Vec<Site>) -> Scan {
        let deep = self.depth == Depth::Deep;
        self.open()?;
        if self.peek()? == b'}' {
            return self.more(b'}', "").map(drop);
        }
        loop {
            self.string()?;
            self.expect(b':', "expected `:`")?;
            if self.peek()? == b'[' {
                self.array(
                    |s, sites| {
                        if s.peek()? == b'{' {
                            s.reaction(sites)
                        } else {
                            s.any(deep, sites)
                        }
                    },
                    sites,
                )?;
            } else {
                self.any(deep, sites)?;
            }
            if !self.more(b'}', "expected `,` or `}`")? {
                return Ok(());
            }
        }
    }

    /// A reaction: if its `user_id` is a valid user id, the user is written as its `user`, in
    /// place of an existing `user` member's value or inserted right after the `user_id` value.
    /// Its children are reactions too. Of members with the same name the last one counts.
    ///
    /// The user's site is reserved where the `user_id` or `user` member is met, so that the
    /// sites stay in document order whichever comes first and whatever lies between.
    fn reaction(&mut self, sites: &mut Vec<Site>) -> Scan {
        let deep = self.depth == Depth::Deep;
        let void = |at: usize| Site {
            start: at,
            end: at,
            kind: SiteKind::Void,
            id: u32::MAX,
        };
        // The slot after the last `user_id` (a user site if it is a valid id), and the slot of
        // the last `user` value with where the sites found inside that value end.
        let mut after_id: Option<usize> = None;
        let mut user_value: Option<(usize, usize)> = None;
        self.open()?;
        let mut more = self.peek()? != b'}';
        if !more {
            self.more(b'}', "")?;
        }
        while more {
            let key = self.string()?;
            let name = ReactionKey::of(&self.src[key.src], key.escaped);
            self.expect(b':', "expected `:`")?;
            let next = self.peek()?;
            match name {
                ReactionKey::UserId => {
                    if let Some(slot) = after_id.take() {
                        sites[slot].kind = SiteKind::Void;
                        self.voids = true;
                    }
                    if next == b'"' {
                        let token = self.string()?;
                        let text = &self.src[token.src.clone()];
                        let valid = if token.escaped {
                            serde_json::from_slice::<String>(text)
                                .is_ok_and(|id| is_valid_id(id.as_bytes()))
                        } else {
                            is_valid_id(&text[1..text.len() - 1])
                        };
                        if valid {
                            after_id = Some(sites.len());
                            sites.push(Site {
                                start: token.out.end,
                                end: token.out.end,
                                kind: SiteKind::User {
                                    key_start: token.out.start,
                                    key_end: token.out.end,
                                    escaped: token.escaped,
                                },
                                id: u32::MAX,
                            });
                        } else if deep {
                            self.note_candidate(token, sites);
                        }
                    } else {
                        self.any(deep, sites)?;
                    }
                }
                ReactionKey::User => {
                    if let Some((slot, _)) = user_value.take() {
                        sites[slot].kind = SiteKind::Void;
                        self.voids = true;
                    }
                    let slot = sites.len();
                    sites.push(void(self.out_pos()));
                    self.any(deep, sites)?;
                    sites[slot].end = self.out_pos();
                    user_value = Some((slot, sites.len()));
                }
                ReactionKey::Children if next == b'{' => self.reactions(sites)?,
                _ => self.any(deep, sites)?,
            }
            more = self.more(b'}', "expected `,` or `}`")?;
        }
        match (after_id, user_value) {
            (Some(id), Some((slot, inner_end))) => {
                // The `user` value is replaced whole: nothing found inside it is written.
                sites[slot].kind = sites[id].kind;
                sites[id].kind = SiteKind::Void;
                for site in &mut sites[slot + 1..inner_end] {
                    site.kind = SiteKind::Void;
                }
                self.voids = true;
            }
            (Some(_), None) => {}
            (None, Some(_)) => self.voids = true,
            (None, None) => {}
        }
        Ok(())
    }
}

/// Which member of a reaction a key names.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReactionKey {
    UserId,
    User,
    Children,
    Other,
}

impl ReactionKey {
    fn of(token: &[u8], escaped: bool) -> ReactionKey {
        let decoded;
        let name = if escaped {
            match serde_json::from_slice::<String>(token) {
                Ok(text) => {
                    decoded = text;
                    decoded.as_bytes()
                }
                Err(_) => return ReactionKey::Other,
            }
        } else {
            &token[1..token.len() - 1]
        };
        match name {
            b"user_id" => ReactionKey::UserId,
            b"user" => ReactionKey::User,
            b"latest_children" | b"own_children" => ReactionKey::Children,
            _ => ReactionKey::Other,
        }
    }
}
