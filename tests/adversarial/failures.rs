//! A decoder's failure on a shot answers that shot, once.
