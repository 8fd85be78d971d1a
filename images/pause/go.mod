module edgefleet.local/images/pause

go 1.22
