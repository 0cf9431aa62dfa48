; A hand-written ALFWorld problem (not from ALFRED): a book on a bed, a desk lamp (off) on a side table, a drawer.
; Goal: look at the book under the desk lamp (hold the book next to the lamp, switched on).
(define (problem tiny_book_lamp)
(:domain alfred)
(:objects
agent1 - agent
Book - object
DeskLamp - object
BookType - otype
DeskLampType - otype
BedType - rtype
SideTableType - rtype
DrawerType - rtype
Book_bar__plus_00_dot_50_bar__plus_00_dot_60_bar__minus_01_dot_00 - object
DeskLamp_bar__plus_02_dot_00_bar__plus_00_dot_90_bar__plus_01_dot_00 - object
Bed_bar__plus_00_dot_50_bar__plus_00_dot_00_bar__minus_01_dot_00 - receptacle
SideTable_bar__plus_02_dot_00_bar__plus_00_dot_00_bar__plus_01_dot_00 - receptacle
Drawer_bar__plus_02_dot_00_bar__plus_00_dot_30_bar__plus_01_dot_00 - receptacle
loc_bar_0_bar_0_bar_0_bar_0 - location
loc_bar_1_bar__minus_4_bar_2_bar_45 - location
loc_bar_8_bar_4_bar_1_bar_60 - location
loc_bar_8_bar_3_bar_1_bar_45 - location
)
(:init
(receptacleType Bed_bar__plus_00_dot_50_bar__plus_00_dot_00_bar__minus_01_dot_00 BedType)
(receptacleType SideTable_bar__plus_02_dot_00_bar__plus_00_dot_00_bar__plus_01_dot_00 SideTableType)
(receptacleType Drawer_bar__plus_02_dot_00_bar__plus_00_dot_30_bar__plus_01_dot_00 DrawerType)
(objectType Book_bar__plus_00_dot_50_bar__plus_00_dot_60_bar__minus_01_dot_00 BookType)
(objectType DeskLamp_bar__plus_02_dot_00_bar__plus_00_dot_90_bar__plus_01_dot_00 DeskLampType)
(canContain BedType BookType)
(canContain SideTableType BookType)
(canContain DrawerType BookType)
(pickupable Book_bar__plus_00_dot_50_bar__plus_00_dot_60_bar__minus_01_dot_00)
(toggleable DeskLamp_bar__plus_02_dot_00_bar__plus_00_dot_90_bar__plus_01_dot_00)
(openable Drawer_bar__plus_02_dot_00_bar__plus_00_dot_30_bar__plus_01_dot_00)
(atLocation agent1 loc_bar_0_bar_0_bar_0_bar_0)
(receptacleAtLocation Bed_bar__plus_00_dot_50_bar__plus_00_dot_00_bar__minus_01_dot_00 loc_bar_1_bar__minus_4_bar_2_bar_45)
(receptacleAtLocation SideTable_bar__plus_02_dot_00_bar__plus_00_dot_00_bar__plus_01_dot_00 loc_bar_8_bar_4_bar_1_bar_60)
(receptacleAtLocation Drawer_bar__plus_02_dot_00_bar__plus_00_dot_30_bar__plus_01_dot_00 loc_bar_8_bar_3_bar_1_bar_45)
(inReceptacle Book_bar__plus_00_dot_50_bar__plus_00_dot_60_bar__minus_01_dot_00 Bed_bar__plus_00_dot_50_bar__plus_00_dot_00_bar__minus_01_dot_00)
(inReceptacle DeskLamp_bar__plus_02_dot_00_bar__plus_00_dot_90_bar__plus_01_dot_00 SideTable_bar__plus_02_dot_00_bar__plus_00_dot_00_bar__plus_01_dot_00)
(objectAtLocation Book_bar__plus_00_dot_50_bar__plus_00_dot_60_bar__minus_01_dot_00 loc_bar_1_bar__minus_4_bar_2_bar_45)
(objectAtLocation DeskLamp_bar__plus_02_dot_00_bar__plus_00_dot_90_bar__plus_01_dot_00 loc_bar_8_bar_4_bar_1_bar_60)
)
(:goal
(and
(exists (?ot - object ?r - receptacle ?a - agent ?l - location)
(and
(objectType ?ot DeskLampType)
(toggleable ?ot)
(isToggled ?ot)
(receptacleAtLocation ?r ?l)
(atLocation ?a ?l)
(inReceptacle ?ot ?r)
))
(exists (?o - object ?a - agent)
(and
(objectType ?o BookType)
(holds ?a ?o)
))))
)
