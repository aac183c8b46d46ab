# plot.gp - the benchmark chart, called by run.sh:
#   gnuplot -e "ceiling='F'; peers='F'; out='F.png'; title='...'" plot.gp
# ceiling: rows "x label fraction target text" (fraction of the null-FUSE
#          ceiling; 0 with text n.a. when not measured)
# peers:   three blocks (topicfs, Redis, NATS) of rows "x Mrecords/s text",
#          produce at x = 0..2, consume at x = 4..6
if (strstrt(GPVAL_TERMINALS, "pngcairo") > 0) {
	set terminal pngcairo size 1400,560 font "sans,10"
} else {
	set terminal png size 1400,560
}
set output out
set datafile missing "?"
set style fill solid 0.7 border -1
set grid ytics
set key top left
set bmargin 5
set multiplot layout 1,2 title title

set title "topicfs as a fraction of the null-FUSE ceiling (higher is better)"
set boxwidth 0.6
set yrange [0:1.15]
set xrange [-0.6:*]
set xtics nomirror
set ylabel "null-FUSE time / topicfs time"
plot ceiling using 1:3:xtic(2) with boxes lc rgb "#4a7ebb" title "topicfs", \
     ceiling using 1:4 with points pt 5 ps 1.0 lc rgb "#d62728" title "target (minimum)", \
     ceiling using 1:3:5 with labels offset 0,0.8 notitle

set title "records/s, same machine and data (higher is better)"
set boxwidth 0.9
set yrange [0:*]
set offsets 0, 0, graph 0.12, 0
set xrange [-0.8:6.8]
set xtics ("produce" 1, "consume" 5)
set ylabel "million records/s"
plot peers index 0 using 1:2 with boxes lc rgb "#4a7ebb" title "topicfs", \
     peers index 1 using 1:2 with boxes lc rgb "#d62728" title "Redis Streams", \
     peers index 2 using 1:2 with boxes lc rgb "#2ca02c" title "NATS JetStream", \
     for [i=0:2] peers index i using 1:2:3 with labels offset 0,0.8 notitle
unset multiplot
