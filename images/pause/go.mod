module fanout.dev/images/pause

go 1.24
