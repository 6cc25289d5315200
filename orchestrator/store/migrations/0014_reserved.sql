-- Reserved: migrations 0014 and 0015 are the schedules branch's (issue 23 items 3 and 4, delayed
-- jobs and schedules), which is merged separately. This placeholder only keeps the numbering
-- gapless on the flow branch, whose own migration is 0016. Delete both placeholders when that
-- branch is merged (two files numbered 0014 fail every migration run until then, on purpose).
SELECT 1;
